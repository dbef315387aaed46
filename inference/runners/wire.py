"""The frames a client and a runner exchange over one stream socket.

A frame is a 4-byte big-endian length, then a 4-byte header length, the header (JSON, via
orjson) and the buffers the header lists, back to back. Arrays of booleans, integers and
floats travel as their raw bytes with dtype and shape in the header; anything else (strings,
labels of mixed types) as a JSON list. Decoding accepts only those dtypes, so neither side
ever builds an object from the other's bytes beyond numbers and JSON: the runner may be
subverted by a tenant's file, and the web must not trust what it says back.

Hand-written rather than pickle (which runs code on load), Arrow or msgpack-numpy (another
dependency for two array kinds) because the format is this small and its safety is the point.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import numpy as np
import orjson

_LENGTH = struct.Struct(">II")
# One frame carries at most a model artifact or a batch chunk.
MAX_FRAME_BYTES = 2 * 1024 * 1024 * 1024
_NUMERIC_KINDS = frozenset("biuf")


class WireError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class PeerClosed(WireError):
    """The peer closed the connection (or died) before a whole frame arrived."""


def encode_array(value: Any, buffers: list[bytes]) -> dict:
    """The header entry for an array (appending its bytes to `buffers` when numeric).

    A list of arrays (a multi-output model's predict_proba: one array per output) stays a list.
    """
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, np.ndarray) for item in value):
        return {"list": [encode_array(item, buffers) for item in value]}
    array = np.asarray(value)
    if array.dtype.kind in _NUMERIC_KINDS and array.dtype.fields is None:
        array = np.ascontiguousarray(array)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        buffers.append(array.tobytes())
        return {"dtype": array.dtype.str, "shape": list(array.shape), "buffer": len(buffers) - 1}
    kind = "U" if array.dtype.kind == "U" else "O"
    return {"json": array.tolist(), "shape": list(array.shape), "kind": kind}


def decode_array(entry: dict, buffers: list[memoryview]) -> np.ndarray | list[np.ndarray]:
    """The array a header entry describes (or the list of them); numeric dtypes only from raw bytes."""
    if "list" in entry:
        items = entry["list"]
        if not isinstance(items, list) or len(items) > 10_000:
            raise WireError("a malformed list of arrays")
        return [decode_array(item, buffers) for item in items]
    if "json" in entry:
        values = entry["json"]
        try:
            if entry.get("kind") == "U":
                return np.array(values, dtype=str)
            return np.array(values, dtype=object)
        except ValueError as exc:
            raise WireError(f"a malformed array entry: {exc}") from None
    try:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(int(n) for n in entry["shape"])
        data = buffers[int(entry["buffer"])]
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise WireError(f"a malformed array entry: {exc}") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.itemsize > 16 or any(n < 0 for n in shape):
        raise WireError(f"an array of dtype {dtype.str} is not accepted")
    if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
        raise WireError("an array's bytes do not match its shape")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_input(x: Any, buffers: list[bytes]) -> dict:
    """A model input: a 2-D array, or a DataFrame as named columns (dtypes kept)."""
    if isinstance(x, np.ndarray):
        return {"array": encode_array(x, buffers)}
    columns = [str(name) for name in x.columns]
    return {"frame": {"columns": columns, "data": [encode_array(x[name].to_numpy(), buffers) for name in x.columns]}}


def decode_input(entry: dict, buffers: list[memoryview]) -> Any:
    if "array" in entry:
        return decode_array(entry["array"], buffers)
    import pandas as pd

    frame = entry["frame"]
    data = {name: decode_array(column, buffers) for name, column in zip(frame["columns"], frame["data"], strict=True)}
    return pd.DataFrame(data, columns=frame["columns"])


def pack(header: dict, buffers: list[bytes] = ()) -> list[bytes]:
    if buffers:
        header = {**header, "buffers": [len(b) for b in buffers]}
    head = orjson.dumps(header)
    total = 4 + len(head) + sum(len(b) for b in buffers)
    if total > MAX_FRAME_BYTES:
        raise WireError(f"a frame of {total} bytes is over the limit of {MAX_FRAME_BYTES}")
    return [_LENGTH.pack(total, len(head)), head, *buffers]


def send(sock: socket.socket, header: dict, buffers: list[bytes] = ()) -> None:
    parts = pack(header, list(buffers))
    if len(parts) <= 2 or sum(len(p) for p in parts) < 256 * 1024:
        sock.sendall(b"".join(parts))  # one write for the common small frame
    else:
        for part in parts:
            sock.sendall(part)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise PeerClosed("the peer closed the connection")
        got += n
    return data


def receive(sock: socket.socket, *, max_bytes: int = MAX_FRAME_BYTES) -> tuple[dict, list[memoryview]]:
    """The next frame's header and buffers; PeerClosed at EOF, WireError for garbage."""
    total, head_length = _LENGTH.unpack(_recv_exact(sock, 8))
    if total > max_bytes or head_length > total - 4:
        raise WireError(f"a frame of {total} bytes is over the limit or malformed")
    body = memoryview(_recv_exact(sock, total - 4))
    try:
        header = orjson.loads(body[:head_length])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"a frame's header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("a frame's header is not an object")
    buffers: list[memoryview] = []
    offset = head_length
    for length in header.get("buffers", ()):
        if not isinstance(length, int) or length < 0 or offset + length > len(body):
            raise WireError("a frame's buffers do not match its length")
        buffers.append(body[offset : offset + length])
        offset += length
    return header, buffers
