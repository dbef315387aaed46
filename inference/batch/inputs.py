"""A job's input file: its format, its header checked against the signature, its records cut into chunks.

Two formats, told apart by the first line (gzip is recognised by its magic bytes, whatever
the file's name): CSV with a header row, or JSON lines (one object keyed by feature name, or
one list in signature order, per line). Blank lines are skipped, as pandas does.

Nothing here holds the whole file: the upload is read once in blocks to count its lines,
and the split reads the stored input in blocks and writes one chunk at a time.

A CSV record can span lines when a quoted field holds a newline. A record is complete when
it holds an even number of quote characters (RFC 4180 escapes a quote by doubling it), so
lines are joined until the count is even. Blocks without a quote take the fast path: the
chunk boundaries are found among the newline positions with numpy, without a Python loop
over the lines.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import orjson

from inference.validation import InputSpec
from platform_site.errors import InvalidInput, PayloadTooLarge

GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
BLOCK = 8 * 1024 * 1024
CSV = "csv"
JSONL = "jsonl"
_GZIP_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class InputShape:
    """What the submission learned from the file before storing it."""

    format: str
    compressed: bool
    columns: list[str]
    # Lines after the header: the number of rows, or more when there are blank lines or
    # quoted newlines. The exact count comes from the split.
    lines: int
    uncompressed_bytes: int


def _is_blank(line: bytes) -> bool:
    return not line.strip()


def open_records(handle: BinaryIO, *, compressed: bool) -> BinaryIO:
    """The file's text as a binary stream, gunzipped when it was compressed."""
    return gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle


def read_first_record(stream: BinaryIO, *, is_csv: bool | None) -> bytes:
    """The first non-blank record (a CSV header joins lines until its quotes balance); b"" at the end."""
    first = True
    while True:
        line = stream.readline()
        if not line:
            return b""
        if first:
            first = False
            if line.startswith(BOM):
                line = line[len(BOM) :]
        if _is_blank(line):
            continue
        if is_csv is None:
            is_csv = not line.lstrip().startswith((b"{", b"["))
        if is_csv:
            while line.count(b'"') % 2:
                more = stream.readline()
                if not more:
                    break
                line += more
        return line


def _bad_file(message: str, field: str = "file") -> InvalidInput:
    return InvalidInput(message, errors=[{"field": field, "message": message}])


def inspect_upload(upload: BinaryIO, spec: InputSpec, *, max_rows: int, max_bytes: int) -> InputShape:
    """Check an uploaded file before it is stored: format, header against the signature, size, rows.

    Raises InvalidInput (400) naming every missing and unexpected column, PayloadTooLarge
    (413) past the file-size or row limit.
    """
    upload.seek(0)
    compressed = upload.read(2) == GZIP_MAGIC
    upload.seek(0)
    stream = open_records(upload, compressed=compressed)
    try:
        header = read_first_record(stream, is_csv=None)
        if not header:
            raise _bad_file("The file is empty: send a CSV with a header row, or JSON lines.")
        is_csv = not header.lstrip().startswith((b"{", b"["))
        columns = csv_header(header) if is_csv else jsonl_columns(header, spec)
        is_list = not is_csv and header.lstrip().startswith(b"[")
        check_columns(columns, spec, positional=(is_csv and not spec.named) or is_list)
        size = len(header)
        newlines = 0 if is_csv else 1
        last = header[-1:]
        while True:
            block = stream.read(BLOCK)
            if not block:
                break
            size += len(block)
            if size > max_bytes:
                raise PayloadTooLarge(
                    f"The file is larger than this organization's limit of {max_bytes} bytes (uncompressed).",
                    errors=[{"field": "file", "message": f"larger than {max_bytes} bytes"}],
                )
            newlines += block.count(b"\n")
            last = block[-1:]
    except _GZIP_ERRORS as exc:
        if not compressed:
            raise
        raise _bad_file(f"The file starts like gzip but cannot be decompressed: {exc}.") from None
    finally:
        if compressed:
            stream.close()
    lines = newlines + (1 if last not in (b"\n", b"") and size > len(header) else 0)
    if is_csv and lines == 0:
        raise _bad_file("The file has a header but no rows.")
    if lines > max_rows:
        raise PayloadTooLarge(
            f"The file has {lines} rows; this organization's limit is {max_rows} rows per job.",
            errors=[{"field": "file", "message": f"more than {max_rows} rows"}],
        )
    return InputShape(
        format=CSV if is_csv else JSONL, compressed=compressed, columns=columns, lines=lines, uncompressed_bytes=size
    )


def csv_header(record: bytes) -> list[str]:
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_file(f"The header row is not valid UTF-8: {exc}.") from None
    try:
        names = next(csv.reader(io.StringIO(text, newline=""), strict=True))
    except (csv.Error, StopIteration) as exc:
        raise _bad_file(f"The header row is not valid CSV: {exc}.") from None
    return [name.strip() for name in names]


def jsonl_columns(record: bytes, spec: InputSpec) -> list[str]:
    try:
        first = orjson.loads(record)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"Line 1 is not valid JSON: {exc}.", errors=[{"row": 0, "column": "*", "message": "not valid JSON"}]
        ) from None
    if isinstance(first, dict):
        return [str(key) for key in first]
    if isinstance(first, list):
        # Lists are in signature order; their "columns" are the signature's, checked by count.
        return spec.names[: len(first)] + [f"[{i}]" for i in range(len(spec.names), len(first))]
    raise InvalidInput(
        "Each JSON line must be an object keyed by feature name or a list in signature order.",
        errors=[{"row": 0, "column": "*", "message": "expected an object or a list"}],
    )


def check_columns(columns: list[str], spec: InputSpec, *, positional: bool) -> None:
    """Refuse (400) a header that does not match the signature, naming every missing and extra column."""
    names = spec.names
    if positional:
        # Models fitted on arrays take columns by position (as MLflow does): only the count matters.
        missing = names[len(columns) :]
        extra = columns[len(names) :]
    else:
        seen: set[str] = set()
        duplicates = [name for name in columns if name in seen or seen.add(name)]
        if duplicates:
            raise InvalidInput(
                f"Column(s) {', '.join(duplicates)} appear more than once in the header.",
                errors=[{"column": name, "message": "duplicate column"} for name in duplicates],
            )
        known = set(names)
        extra = [name for name in columns if name not in known]
        missing = [column.name for column in spec.columns if column.name not in seen and not column.allow_missing]
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    raise InvalidInput(
        f"The file's columns do not match the model's signature: {'; '.join(parts)}. The model expects {', '.join(names)}.",
        errors=[{"column": name, "message": "missing column"} for name in missing]
        + [{"column": name, "message": "unexpected column; the model does not take it"} for name in extra],
    )


@dataclass
class Chunk:
    index: int
    first_row: int
    rows: int
    data: bytes


class RecordSplitter:
    """Cut a stream of records into chunks of at most `rows` records and `max_bytes` bytes.

    A single record longer than `max_bytes` makes a chunk of its own.

    Records keep their bytes (and line endings); empty lines ("\n" or "\r\n") are dropped,
    as pandas drops them; the last record gets a newline if the file had none. Memory: one
    block plus one chunk.
    """

    def __init__(self, stream: BinaryIO, *, is_csv: bool, rows: int, max_bytes: int, block_size: int = BLOCK) -> None:
        self.stream = stream
        self.is_csv = is_csv
        self.rows = max(1, rows)
        self.max_bytes = max(1, max_bytes)
        self.block_size = block_size
        self._parts: list[bytes] = []
        self._count = 0
        self._bytes = 0
        self._pending = b""  # a CSV record whose quoted field continues on the next line
        self._index = 0
        self._first_row = 0
        self._at_start = True

    def __iter__(self) -> Iterator[Chunk]:
        carry = b""
        while True:
            block = self.stream.read(self.block_size)
            if not block:
                break
            if self._at_start:
                self._at_start = False
                if block.startswith(BOM):
                    block = block[len(BOM) :]
            block = carry + block
            cut = block.rfind(b"\n")
            if cut < 0:
                carry = block
                continue
            carry = block[cut + 1 :]
            yield from self._take(block[: cut + 1])
        if carry:
            yield from self._take(carry + b"\n")
        if self._pending:
            yield from self._add(self._pending, 1)  # unbalanced quotes: the chunk parser names the row
            self._pending = b""
        if self._count:
            yield self._flush()

    def _flush(self) -> Chunk:
        chunk = Chunk(index=self._index, first_row=self._first_row, rows=self._count, data=b"".join(self._parts))
        self._index += 1
        self._first_row += self._count
        self._parts, self._count, self._bytes = [], 0, 0
        return chunk

    def _add(self, data: bytes, count: int) -> Iterator[Chunk]:
        if self._count and self._bytes + len(data) > self.max_bytes:
            yield self._flush()
        self._parts.append(data)
        self._count += count
        self._bytes += len(data)
        if self._count >= self.rows or self._bytes >= self.max_bytes:
            yield self._flush()

    def _take(self, lines: bytes) -> Iterator[Chunk]:
        """`lines` ends with a newline."""
        if not self._pending and not (self.is_csv and b'"' in lines):
            octets = np.frombuffer(lines, dtype=np.uint8)
            ends = np.flatnonzero(octets == 10) + 1  # end offset of each line
            lengths = np.diff(ends, prepend=0)
            blank = (lengths == 1) | ((lengths == 2) & (octets[ends - 2] == 13))
            if not blank.any():
                yield from self._take_simple(lines, ends)
                return
        for line in lines[:-1].split(b"\n"):
            line += b"\n"
            if self._pending:
                line = self._pending + line
                self._pending = b""
            elif line in (b"\n", b"\r\n"):
                continue
            if self.is_csv and line.count(b'"') % 2:
                self._pending = line
                continue
            yield from self._add(line, 1)

    def _take_simple(self, lines: bytes, ends: np.ndarray) -> Iterator[Chunk]:
        """Every line is one record: cut at newline offsets without a Python loop over lines."""
        start, done, total = 0, 0, len(ends)
        while done < total:
            room_rows = self.rows - self._count
            room_bytes = self.max_bytes - self._bytes
            fit = int(np.searchsorted(ends, start + room_bytes, side="right")) - done
            take = min(room_rows, total - done, fit)
            if take == 0:
                if self._count:
                    yield self._flush()  # the next record would pass the byte budget
                    continue
                take = 1  # a record larger than the budget is a chunk of its own
            end = int(ends[done + take - 1])
            yield from self._add(lines[start:end], take)
            start, done = end, done + take
