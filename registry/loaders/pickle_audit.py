"""Walk a pickle's opcodes, without running any of it, and list every global it names.

Hand-written because of our threat model: scanners that look only at GLOBAL opcodes, or
take "the last two strings pushed" as STACK_GLOBAL's operands, are fooled by memoized
strings, EXT codes and joblib's raw array buffers. This walker keeps a symbolic stack
and memo exactly as ``pickle._Unpickler`` does (literals are kept, anything built by a call
is a placeholder), so STACK_GLOBAL's operands are the real ones, and it understands
joblib's layout (a pickle whose BUILD of a ``NumpyArrayWrapper`` is followed by raw array
bytes, or by a nested pickle for object arrays), so nothing hides in an array buffer.

It reads the opcode table of ``pickletools`` like ``pickletools.genops`` does, but reads
the arguments of GLOBAL/INST itself (two lines, as the unpickler does, rather than
genops' space-joined pair) and skips large binary payloads instead of holding them.

The walk is the reporting half of the safety story: it names *every* refused global
before anything loads. The enforcing half is the unpickler's ``find_class`` in
``safe_pickle.py``; should the two ever disagree, the unpickler still refuses.

Globals alone do not bound what a file can do: BUILD hands hostile state to whatever is
on the stack, and allowed callables convert hostile arguments. So the walk also enforces
what only it can see, because it keeps the stack and memo symbolically:

- BUILD only on an object the stream itself just constructed (REDUCE/NEWOBJ/NEWOBJ_EX/
  OBJ/INST of an allowed class, ``copyreg._reconstructor``, or one of numpy's, scipy's and
  scikit-learn's reconstruction helpers), once, and before it was handed to anything else.
  Never on a class, function or module attribute: BUILD on a class is ``setattr`` on it for
  the whole process.
- ``functools.partial`` only of ``check_array`` with scikit-learn's own keywords, in its
  call and in its BUILD state (``allowlist.partial_problem``); ``check_array`` never called.
- BUILD of a ``numpy.dtype`` only on a copy (``copy=True``), with state that gives exactly
  the dtype numpy builds from its descriptor (``dtypes.dtype_problem``).
- The converters that could turn an object array's pointers into bytes or numbers
  (``bytes``, ``bytearray``, ``numpy.str_``, ``numpy.bytes_``, ``_frombuffer``) only on
  literals; ``numpy.ndarray``/``matrix`` never called directly (a buffer argument would
  view any object's memory).

These rules are checked here rather than only in the unpickler because plain pickles are
read by the C unpickler, which cannot be hooked per opcode; the pure-Python unpickler is
a CPython private name we keep to the joblib path joblib already puts it on. The loader
re-checks the result after loading (``structure.check_model_structures``: every dtype
canonical, object arrays of plain values; ``safe_pickle``: no allowed class or function
changed).
"""

from __future__ import annotations

import copyreg
import functools
import io
import math
import pickle
import pickletools
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from platform_site.errors import InvalidArtifact, UnsafeArtifact

from .allowlist import (
    FUNCTOOLS_PARTIAL,
    JOBLIB_ARRAY_WRAPPER,
    OLD_JOBLIB_WRAPPERS,
    PARTIAL_FUNCTION,
    SUBSTITUTED_GLOBALS,
    TRANSFORMER_UFUNCS,
    canonical_global,
    is_allowed_global,
    partial_problem,
    resolve_allowed_global,
)

_CHUNK = 1 << 20
# Binary payloads at least this big are skipped, not read: they are array data, never names.
_SKIP_PAYLOAD_BYTES = 1 << 16
_BINARY_LENGTH_PREFIX = {"SHORT_BINBYTES": 1, "BINBYTES": 4, "BINBYTES8": 8, "BYTEARRAY8": 8}
_WRAPPER_NAME = ".".join(JOBLIB_ARRAY_WRAPPER)
_PARTIAL_NAME = ".".join(FUNCTOOLS_PARTIAL)
_TRANSFORMER_UFUNC_NAMES = frozenset(".".join(pair) for pair in TRANSFORMER_UFUNCS)
_ARRAY_SUBCLASSES = frozenset({"numpy.ndarray", "numpy.matrix"})
# Allowed functions that return a fresh object which the pickle then hands BUILD state.
_RECONSTRUCTORS = frozenset(
    {
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy.ma.core._mareconstruct",
        "numpy.random._pickle.__randomstate_ctor",
        "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor",
        "sklearn.neighbors._kd_tree.newObj",
        "sklearn.neighbors._ball_tree.newObj",
        "sklearn.metrics._dist_metrics.newObj",
        _WRAPPER_NAME,
    }
)
# Converters that may only be called on literals: on an object array they return its pointers.
_LITERAL_ONLY_CALLS = frozenset({"builtins.bytes", "builtins.bytearray", "numpy.str_", "numpy.bytes_"})
_FROMBUFFER = frozenset({"numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer"})
# Rebuilt by numpy's reconstructors; called directly, a buffer argument views any object's memory.
_NEVER_CALLED = frozenset({"numpy.ndarray", "numpy.matrix"})
_LITERAL_TYPES = (str, bytes, bytearray, int, float, bool, type(None))
# Opcodes whose whole effect is to push their argument.
_LITERAL_OPCODES = frozenset(
    {
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "NONE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
    }
)


@dataclass(frozen=True)
class PickleAudit:
    """What a pickle (or joblib) stream refers to; every global in it is on the allow-list."""

    globals: tuple[str, ...]
    sklearn_versions: tuple[str, ...]
    joblib_arrays: int
    nested_pickles: int


class _Malformed(Exception):
    """The stream is not one the unpickler would read the way we read it."""


class _Global:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Obj:
    """Whatever a call builds; ``kind`` is "new" (cls.__new__, no __init__) or "call".

    ``built``: it has had its BUILD; ``escaped``: it was handed to a container, call or state.
    """

    __slots__ = ("kind", "factory", "args", "state", "built", "escaped", "plain")

    def __init__(self, kind: str, factory: Any, args: Any) -> None:
        self.kind, self.factory, self.args, self.state = kind, factory, args, None
        self.built = self.escaped = False
        self.plain = None  # the numpy dtype this call builds, once _materialize made it


def _escape(value: Any) -> Any:
    if isinstance(value, _Obj):
        value.escaped = True
    return value


def _escape_all(values: Any) -> Any:
    for value in values:
        if isinstance(value, _Obj):
            value.escaped = True
    return values


class _Dict:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[Any, Any]] | None = None) -> None:
        self.items = items or []

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in reversed(self.items):
            if k == key and isinstance(k, str):
                return v
        return default


class _Blob:
    """A binary payload too large to keep; only its length matters."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _Opaque:
    """A set, persistent object or anything else whose content does not matter."""

    __slots__ = ()


@dataclass
class _Findings:
    seen: dict[str, None] = field(default_factory=dict)
    refused: dict[str, None] = field(default_factory=dict)
    reasons: dict[str, None] = field(default_factory=dict)
    sklearn_versions: dict[str, None] = field(default_factory=dict)
    joblib_arrays: int = 0
    nested_pickles: int = 0
    checked_dtypes: dict[int, tuple[Any, str | None]] = field(default_factory=dict)


class _CountingReader:
    """A read-only view of a stream that knows how many bytes were consumed."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.pos = 0
        # Uncompressed files and bytes can skip array data by seeking; decompressors must read it.
        self._size: int | None = None
        if isinstance(raw, io.BytesIO) or isinstance(getattr(raw, "raw", None), io.FileIO):
            here = raw.tell()
            self._size = raw.seek(0, io.SEEK_END)
            raw.seek(here)

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.pos += len(data)
        return data

    def readline(self) -> bytes:
        data = self.raw.readline()
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        if self._size is not None:
            here = self.raw.tell()
            if here + n > self._size:
                raise _Malformed("the file ends inside array data")
            self.raw.seek(here + n)
            self.pos += n
            return
        while n > 0:
            chunk = self.read(min(n, _CHUNK))
            if not chunk:
                raise _Malformed("the file ends inside array data")
            n -= len(chunk)


def walk_pickle_stream(stream: BinaryIO) -> PickleAudit:
    """Walk one pickle (joblib-aware) from ``stream`` and return what it refers to.

    Raises UnsafeArtifact naming every refused global (after walking the whole stream),
    InvalidArtifact for a stream the unpickler would not read the way we read it (or an
    old multi-file joblib pickle). A structural error after a refusal still reports the
    refusal: it is the more useful message.
    """
    findings = _Findings()
    try:
        _Walker(_CountingReader(stream), findings, nested=False).run()
    except _WALK_ERRORS as exc:
        if findings.refused or findings.reasons:
            raise _refusal(findings) from exc
        raise InvalidArtifact(f"The file is not a pickle this platform can read: {_describe(exc)}.") from exc
    if findings.refused and set(findings.refused) <= OLD_JOBLIB_WRAPPERS:
        raise InvalidArtifact(
            "The file was written by joblib older than 0.10, which kept arrays in companion .npy files; "
            "load it with that joblib and save it again with joblib.dump."
        )
    if findings.refused or findings.reasons:
        raise _refusal(findings)
    return PickleAudit(
        globals=tuple(findings.seen),
        sklearn_versions=tuple(findings.sklearn_versions),
        joblib_arrays=findings.joblib_arrays,
        nested_pickles=findings.nested_pickles,
    )


_WALK_ERRORS = (_Malformed, ValueError, IndexError, KeyError, EOFError, TypeError, OverflowError, RecursionError)


def _refusal(findings: _Findings) -> UnsafeArtifact:
    refused = list(findings.refused)
    if not findings.reasons:
        return UnsafeArtifact(refused_globals=refused)
    parts = ["it refers to globals outside the allow-list: " + ", ".join(sorted(refused))] if refused else []
    parts.extend(findings.reasons)
    return UnsafeArtifact("The model file is refused: " + "; ".join(parts) + ".", refused_globals=refused)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Malformed):
        return str(exc)
    if isinstance(exc, IndexError):
        return "an opcode needs more values than the stack holds"
    if isinstance(exc, KeyError):
        return f"it reads memo entry {exc.args[0]!r} before writing it"
    if isinstance(exc, EOFError):
        return "it ends before its STOP opcode"
    return str(exc) or type(exc).__name__


class _Walker:
    def __init__(self, reader: _CountingReader, findings: _Findings, *, nested: bool) -> None:
        self.reader = reader
        self.findings = findings
        self.nested = nested
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.frame_end: int | None = None

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        reader = self.reader
        read = reader.read
        while True:
            start = reader.pos
            if self.frame_end is not None and start >= self.frame_end:
                self.frame_end = None
            code = read(1)
            if not code:
                raise _Malformed("it ends before its STOP opcode")
            entry = _DISPATCH.get(code[0])
            if entry is None:
                raise _Malformed(f"unknown opcode {code!r} at byte {start}")
            opcode, argument, handler = entry
            if argument is None:
                arg = None
            elif argument is _READ_PREFIXED:
                arg = self._read_prefixed(opcode)
            elif argument is _READ_GLOBAL_NAME:
                # The unpickler reads two newline-terminated UTF-8 lines; so do we.
                arg = self._read_line().decode("utf-8"), self._read_line().decode("utf-8")
            else:
                arg = argument(reader)
            if self.frame_end is not None and reader.pos > self.frame_end:
                raise _Malformed("an opcode crosses the end of its frame")
            if handler is _LITERAL:
                self.stack.append(arg)  # the stack object changes at MARK; never alias it
            elif handler is _STOP:
                if self.frame_end is not None and reader.pos < self.frame_end:
                    raise _Malformed("data follows STOP inside the last frame")
                if not self.stack:
                    raise _Malformed("STOP with an empty stack")
                return
            elif handler is None:
                raise _Malformed(f"opcode {opcode.name} is not understood by the audit")
            else:
                handler(self, arg)

    def _read_prefixed(self, opcode: pickletools.OpcodeInfo) -> Any:
        width = _BINARY_LENGTH_PREFIX[opcode.name]
        prefix = self.reader.read(width)
        if len(prefix) != width:
            raise _Malformed("it ends inside a length prefix")
        size = int.from_bytes(prefix, "little")
        if size >= _SKIP_PAYLOAD_BYTES:
            self.reader.skip(size)
            return _Blob(size)
        data = self.reader.read(size)
        if len(data) != size:
            raise _Malformed("it ends inside a bytes payload")
        return bytearray(data) if opcode.name == "BYTEARRAY8" else data

    def _read_line(self) -> bytes:
        line = self.reader.readline()
        if not line.endswith(b"\n"):
            raise _Malformed("it ends inside a GLOBAL/INST name")
        return line[:-1]

    # --- stack helpers ----------------------------------------------------------------

    def _push(self, value: Any) -> None:
        self.stack.append(value)

    def _pop(self) -> Any:
        return self.stack.pop()

    def _pop_mark(self) -> list[Any]:
        items = self.stack
        self.stack = self.metastack.pop()
        return _escape_all(items)

    # --- globals ----------------------------------------------------------------------

    def _global(self, module: str, name: str) -> _Global:
        module, name = canonical_global(module, name)
        full = f"{module}.{name}"
        self.findings.seen.setdefault(full, None)
        if not is_allowed_global(module, name):
            self.findings.refused.setdefault(full, None)
        elif self.nested and full == _WRAPPER_NAME:
            raise _Malformed("a joblib array wrapper inside an object array's pickle")
        return _Global(full)

    def _op_GLOBAL(self, arg: tuple[str, str]) -> None:
        self._push(self._global(*arg))

    def _op_STACK_GLOBAL(self, _: None) -> None:
        name = self._pop()
        module = self._pop()
        if isinstance(module, str) and isinstance(name, str):
            self._push(self._global(module, name))
            return
        # Operands built at load time cannot be named now; refuse rather than guess.
        self.findings.reasons.setdefault("it builds a STACK_GLOBAL name at load time", None)
        self._push(_Global("<computed>"))

    def _ext(self, code: int) -> None:
        key = copyreg._inverted_registry.get(code)
        if key is None:
            raise _Malformed(f"it uses copyreg extension code {code}, which is not registered")
        self._push(self._global(*key))

    def _op_EXT1(self, code: int) -> None:
        self._ext(code)

    _op_EXT2 = _op_EXT1
    _op_EXT4 = _op_EXT1

    # --- framing, protocol, memo --------------------------------------------------------

    def _op_PROTO(self, proto: int) -> None:
        if not 0 <= proto <= pickle.HIGHEST_PROTOCOL:
            raise _Malformed(f"unsupported pickle protocol {proto}")

    def _op_FRAME(self, size: int) -> None:
        if self.frame_end is not None and self.reader.pos < self.frame_end:
            raise _Malformed("a frame starts before the previous one ends")
        self.frame_end = self.reader.pos + size

    def _put(self, index: int) -> None:
        if index < 0:
            raise _Malformed("negative memo index")
        self.memo[index] = self.stack[-1]

    def _op_PUT(self, index: int) -> None:
        self._put(index)

    _op_BINPUT = _op_PUT
    _op_LONG_BINPUT = _op_PUT

    def _op_MEMOIZE(self, _: None) -> None:
        self._put(len(self.memo))

    def _op_GET(self, index: int) -> None:
        self._push(self.memo[index])

    _op_BINGET = _op_GET
    _op_LONG_BINGET = _op_GET

    # --- literals with a twist ----------------------------------------------------------

    def _op_INT(self, value: int | bool) -> None:
        self._push(value)  # "I01"/"I00" are True/False, as the unpickler reads them

    def _op_NEWTRUE(self, _: None) -> None:
        self._push(True)

    def _op_NEWFALSE(self, _: None) -> None:
        self._push(False)

    def _op_PERSID(self, _: Any) -> None:
        self.findings.reasons.setdefault("it uses pickle persistent ids, which the platform refuses", None)
        self._push(_Opaque())

    def _op_BINPERSID(self, _: None) -> None:
        self._pop()
        self._op_PERSID(None)

    def _op_NEXT_BUFFER(self, _: None) -> None:
        raise _Malformed("it refers to out-of-band buffers")

    _op_READONLY_BUFFER = _op_NEXT_BUFFER

    # --- containers ---------------------------------------------------------------------

    def _op_MARK(self, _: None) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _op_POP(self, _: None) -> None:
        if self.stack:
            self.stack.pop()
        else:
            self._pop_mark()

    def _op_POP_MARK(self, _: None) -> None:
        self._pop_mark()

    def _op_DUP(self, _: None) -> None:
        self._push(self.stack[-1])

    def _op_EMPTY_LIST(self, _: None) -> None:
        self._push([])

    def _op_LIST(self, _: None) -> None:
        self._push(self._pop_mark())

    def _op_APPEND(self, _: None) -> None:
        value = _escape(self._pop())
        target = self.stack[-1]
        if isinstance(target, list):
            target.append(value)

    def _op_APPENDS(self, _: None) -> None:
        items = self._pop_mark()
        target = self.stack[-1]
        if isinstance(target, list):
            target.extend(items)

    def _op_EMPTY_TUPLE(self, _: None) -> None:
        self._push(())

    def _op_TUPLE(self, _: None) -> None:
        self._push(tuple(self._pop_mark()))

    def _op_TUPLE1(self, _: None) -> None:
        self.stack[-1] = _escape_all((self.stack[-1],))

    def _op_TUPLE2(self, _: None) -> None:
        second = self._pop()
        self.stack[-1] = _escape_all((self.stack[-1], second))

    def _op_TUPLE3(self, _: None) -> None:
        third = self._pop()
        second = self._pop()
        self.stack[-1] = _escape_all((self.stack[-1], second, third))

    def _op_EMPTY_DICT(self, _: None) -> None:
        self._push(_Dict())

    def _op_DICT(self, _: None) -> None:
        self._push(_Dict(_pairs(self._pop_mark())))

    def _op_SETITEM(self, _: None) -> None:
        value = _escape(self._pop())
        key = _escape(self._pop())
        target = self.stack[-1]
        if isinstance(target, _Dict):
            target.items.append((key, value))

    def _op_SETITEMS(self, _: None) -> None:
        pairs = _pairs(self._pop_mark())
        target = self.stack[-1]
        if isinstance(target, _Dict):
            target.items.extend(pairs)

    def _op_EMPTY_SET(self, _: None) -> None:
        self._push(_Opaque())

    def _op_ADDITEMS(self, _: None) -> None:
        self._pop_mark()
        self.stack[-1]  # noqa: B018 - the unpickler needs a target; so do we

    def _op_FROZENSET(self, _: None) -> None:
        self._pop_mark()
        self._push(_Opaque())

    # --- calls ----------------------------------------------------------------------------

    def _called(self, factory: Any, args: Any) -> _Obj:
        if isinstance(factory, _Global) and factory.name == _WRAPPER_NAME:
            raise _Malformed("a joblib array wrapper built by calling it")
        self._check_call(factory, args)
        return _Obj("call", factory, args)

    def _check_call(self, factory: Any, args: Any) -> None:
        """Refuse the calls that read an object's memory, whatever the allow-list says."""
        if not isinstance(factory, _Global):
            return
        name = factory.name
        if not isinstance(args, tuple):
            args = (args,)
        if name == _PARTIAL_NAME:
            func, rest = (args[0], args[1:]) if args else (None, ())
            problem = partial_problem(func=_callable_name(func), args=rest, keywords={})
            if problem is not None:
                self.findings.reasons.setdefault(problem, None)
        elif name in _TRANSFORMER_UFUNC_NAMES:
            self.findings.reasons.setdefault(
                f"it calls {name} while loading; it may only be a FunctionTransformer's func or inverse_func", None
            )
        elif name == PARTIAL_FUNCTION:
            self.findings.reasons.setdefault(
                f"it calls {name} while loading; it may only be the function of a functools.partial", None
            )
        elif name in _NEVER_CALLED:
            self.findings.reasons.setdefault(
                f"it calls {name} directly, which numpy never writes (a buffer argument views any object's memory)", None
            )
        elif name in _LITERAL_ONLY_CALLS and not all(isinstance(arg, (*_LITERAL_TYPES, _Blob)) for arg in args):
            self.findings.reasons.setdefault(
                f"it calls {name} on a value built at load time (on an object array that returns its pointers); "
                f"{name} may only convert literals",
                None,
            )
        elif name in _FROMBUFFER and not (args and isinstance(args[0], (bytes, bytearray, _Blob))):
            self.findings.reasons.setdefault(
                f"it calls {name} on a value built at load time (on an object array that returns its pointers); "
                "arrays may only be read from literal bytes",
                None,
            )

    def _op_REDUCE(self, _: None) -> None:
        args = _escape(self._pop())
        factory = self.stack[-1]
        if (
            isinstance(factory, _Global)
            and factory.name == "copyreg._reconstructor"
            and isinstance(args, tuple)
            and len(args) == 3
            and isinstance(args[1], _Global)
            and args[1].name == "builtins.object"
            and args[2] is None
        ):
            self.stack[-1] = _Obj("new", args[0], ())  # object.__new__(cls): how protocols 0-1 write objects
        else:
            self.stack[-1] = self._called(factory, args)

    def _op_NEWOBJ(self, _: None) -> None:
        args = _escape(self._pop())
        cls = self._pop()
        self._check_new(cls)
        self._check_call(cls, args)
        self._push(_Obj("new", cls, args))

    def _op_NEWOBJ_EX(self, _: None) -> None:
        _escape(self._pop())  # kwargs
        args = _escape(self._pop())
        cls = self._pop()
        self._check_new(cls)
        self._check_call(cls, args)
        self._push(_Obj("new", cls, args))

    def _check_new(self, cls: Any) -> None:
        if isinstance(cls, _Global) and cls.name == _PARTIAL_NAME:
            # A partial pickles as REDUCE of the class; NEWOBJ_EX would pass keywords unseen.
            self.findings.reasons.setdefault("it builds functools.partial with NEWOBJ, which pickle never writes for it", None)

    def _op_OBJ(self, _: None) -> None:
        items = self._pop_mark()
        self._push(self._called(items[0], tuple(items[1:])))

    def _op_INST(self, arg: tuple[str, str]) -> None:
        cls = self._global(*arg)
        self._push(self._called(cls, tuple(self._pop_mark())))

    def _op_BUILD(self, _: None) -> None:
        state = _escape(self._pop())
        target = self.stack[-1]
        if isinstance(state, _Dict):
            version = state.get("_sklearn_version")
            if isinstance(version, str):
                self.findings.sklearn_versions.setdefault(version, None)
        problem = _build_problem(target, state)
        if problem is not None:
            self.findings.reasons.setdefault(problem, None)
            return
        target.state = state
        target.plain = None
        target.built = True
        if target.factory.name == _WRAPPER_NAME:
            self._consume_joblib_array(target)
            self.stack[-1] = _Obj("call", _Global("numpy.ndarray"), ())

    # --- joblib -----------------------------------------------------------------------------

    def _consume_joblib_array(self, wrapper: _Obj) -> None:
        """Skip (or, for object arrays, walk) the bytes joblib wrote after this wrapper."""
        if self.frame_end is not None and self.reader.pos < self.frame_end:
            # The unpickler would have buffered the whole frame: array bytes and opcodes
            # would no longer be where we read them.
            raise _Malformed("joblib array data inside a pickle frame")
        subclass = wrapper.state.get("subclass") if isinstance(wrapper.state, _Dict) else None
        if not (isinstance(subclass, _Global) and subclass.name in _ARRAY_SUBCLASSES):
            raise _Malformed("a joblib array whose subclass is not numpy.ndarray or numpy.matrix")
        layout = joblib_array_layout(_as_plain_state(wrapper.state), checked_dtypes=self.findings.checked_dtypes)
        self.findings.joblib_arrays += 1
        if layout.dtype.hasobject:
            self.findings.nested_pickles += 1
            _Walker(self.reader, self.findings, nested=True).run()
            return
        if layout.alignment is not None:
            padding = self.reader.read(1)
            self.reader.skip(padding[0] if padding else 0)
        self.reader.skip(layout.nbytes)


def _build_problem(target: Any, state: Any) -> str | None:
    """Why BUILD may not apply ``state`` to ``target``, or None (see the module docstring)."""
    if isinstance(target, _Global):
        return f"it applies BUILD state to {target.name} itself (setattr on it for the whole process)"
    if not isinstance(target, _Obj):
        return "it applies BUILD state to a value it did not construct"
    factory = target.factory
    if isinstance(factory, _Global) and factory.name == _PARTIAL_NAME and not target.built and not target.escaped:
        return _partial_state_problem(state)
    if not isinstance(factory, _Global) or not _returns_fresh_object(factory.name):
        what = factory.name if isinstance(factory, _Global) else "a value built at load time"
        return f"it applies BUILD state to what {what} returned, which is not an object it constructed"
    if target.built:
        return f"it applies BUILD state twice to one {factory.name}"
    if target.escaped:
        return f"it applies BUILD state to a {factory.name} after handing it to another object"
    if factory.name == "numpy.dtype":
        return _dtype_build_problem(target, state)
    return None


def _partial_state_problem(state: Any) -> str | None:
    """Why BUILD may not give ``state`` to a functools.partial: (function, args, keywords, namespace)."""
    if not (isinstance(state, tuple) and len(state) == 4):
        return "it gives a functools.partial state that is not (function, args, keywords, attributes)"
    func, args, keywords, namespace = state
    if namespace is not None and not (isinstance(namespace, _Dict) and not namespace.items):
        return "it gives a functools.partial attributes of its own"
    keywords = _Dict() if keywords is None else keywords
    if not isinstance(args, tuple) or not isinstance(keywords, _Dict) or not all(isinstance(k, str) for k, _ in keywords.items):
        return "it gives a functools.partial arguments that are not plain data"
    return partial_problem(
        func=_callable_name(func), args=args, keywords={key: _partial_value(value) for key, value in keywords.items}
    )


def _callable_name(func: Any) -> str:
    return func.name if isinstance(func, _Global) else "a value built at load time"


def _partial_value(value: Any) -> Any:
    """A partial's keyword value as ``partial_problem`` compares it: globals by name, lists as tuples."""
    if isinstance(value, _Global):
        return value.name
    if isinstance(value, (list, tuple)):
        return tuple(_partial_value(item) for item in value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return "<a value built at load time>"


def _dtype_build_problem(target: _Obj, state: Any) -> str | None:
    args = target.args
    if target.kind != "call" or not isinstance(args, tuple) or len(args) != 3 or args[2] not in (True, 1):
        # numpy.dtype(..., copy=False) returns numpy's shared dtype: BUILD would change it for everyone.
        return "it applies BUILD state to a numpy dtype that is not a fresh copy"
    from .dtypes import dtype_problem

    probe = _Obj("call", target.factory, args)
    probe.state = state
    try:
        dtype = _materialize(probe)
    except _Malformed as exc:
        return f"it builds a numpy dtype from state that is not plain data ({exc})"
    problem = dtype_problem(dtype)
    if problem is not None:
        return f"it builds a numpy dtype {_dtype_label(dtype)} whose {problem}"
    return None


def _dtype_label(dtype: Any) -> str:
    return "object" if dtype.kind == "O" else repr(dtype.str)


@functools.lru_cache(maxsize=1024)
def _returns_fresh_object(name: str) -> bool:
    """Whether calling this allowed global constructs a new object (a class or a reconstructor)."""
    if name in _RECONSTRUCTORS or name.rpartition(".")[2].startswith("__pyx_unpickle_"):
        return True
    module, _, attribute = name.rpartition(".")
    if (module, attribute) in SUBSTITUTED_GLOBALS or not is_allowed_global(module, attribute):
        return False
    return isinstance(resolve_allowed_global(module, attribute), type)


def _pairs(items: list[Any]) -> list[tuple[Any, Any]]:
    if len(items) % 2:
        raise _Malformed("a dict with a key but no value")
    return list(zip(items[::2], items[1::2], strict=True))


@dataclass(frozen=True)
class JoblibArrayLayout:
    """Where and how joblib stored one array, from its NumpyArrayWrapper's state."""

    dtype: Any
    shape: tuple[int, ...]
    order: str
    alignment: int | None
    count: int
    nbytes: int


def joblib_array_layout(
    state: dict[str, Any], *, checked_dtypes: dict[int, tuple[Any, str | None]] | None = None
) -> JoblibArrayLayout:
    """Validate a NumpyArrayWrapper's state (plain values) and return its layout.

    Shared by the walk and by the unpickler, so both read the same bytes the same way.
    ``checked_dtypes`` remembers, for one walk or one load, the verdict on each dtype
    *object* (by identity, holding it so the id is not reused): a forest's memoized node
    dtype is then checked once, not once per tree. Never by equality: a dtype with its
    flags cleared compares equal to the canonical one.
    """
    import numpy as np

    dtype = state.get("dtype")
    shape = state.get("shape")
    order = state.get("order", "C")
    alignment = state.get("numpy_array_alignment_bytes")
    if not isinstance(dtype, np.dtype):
        raise _Malformed("a joblib array without a numpy dtype")
    from .dtypes import dtype_problem

    if checked_dtypes is not None and id(dtype) in checked_dtypes:
        problem = checked_dtypes[id(dtype)][1]
    else:
        problem = dtype_problem(dtype)
        if checked_dtypes is not None:
            checked_dtypes[id(dtype)] = (dtype, problem)
    if problem is not None:
        raise UnsafeArtifact(
            f"The model file is refused: a joblib array's numpy dtype {_dtype_label(dtype)} is not canonical: its {problem}."
        )
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise _Malformed("a joblib array with an invalid shape")
    if order not in ("C", "F"):
        raise _Malformed("a joblib array with an invalid memory order")
    if alignment is not None and (type(alignment) is not int or not 0 < alignment <= 255):
        raise _Malformed("a joblib array with an invalid alignment")
    count = math.prod(shape)
    return JoblibArrayLayout(
        dtype=dtype, shape=shape, order=order, alignment=alignment, count=count, nbytes=count * dtype.itemsize
    )


def _as_plain_state(state: Any) -> dict[str, Any]:
    if not isinstance(state, _Dict):
        raise _Malformed("a joblib array wrapper whose state is not a dict")
    return {key: _materialize(value) for key, value in state.items if isinstance(key, str) and key != "subclass"}


def _materialize(value: Any) -> Any:
    """Turn a symbolic literal (and numpy dtypes built from literals) into a real value."""
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return value
    if isinstance(value, tuple):
        return tuple(_materialize(item) for item in value)
    if isinstance(value, _Dict):
        return {_materialize(k): _materialize(v) for k, v in value.items}
    if isinstance(value, _Obj) and isinstance(value.factory, _Global) and value.factory.name == "numpy.dtype":
        # numpy.dtype is on the allow-list; building one from literals runs no tenant code.
        import numpy as np

        if value.plain is not None:  # one dtype, memoized, describes every tree's nodes
            return value.plain
        if value.kind != "call" or not isinstance(value.args, tuple):
            raise _Malformed("a numpy dtype that is not built from literals")
        try:
            dtype = np.dtype(*_materialize(value.args))
            if value.state is not None:
                dtype.__setstate__(_materialize(value.state))
        except (TypeError, ValueError) as exc:
            raise _Malformed(f"an invalid numpy dtype ({exc})") from exc
        value.plain = dtype
        return dtype
    raise _Malformed("a joblib array wrapper whose state is not plain data")


__all__ = ["PickleAudit", "JoblibArrayLayout", "joblib_array_layout", "walk_pickle_stream"]


# --- the dispatch table -----------------------------------------------------------------
# Built once from pickletools' opcode table: for each opcode byte, how its argument is read
# and what handles it, so the loop does one dict lookup per opcode.
_LITERAL = object()
_STOP = object()
_READ_PREFIXED = object()
_READ_GLOBAL_NAME = object()


def _dispatch_table() -> dict[int, tuple[pickletools.OpcodeInfo, Any, Any]]:
    table = {}
    for opcode in pickletools.opcodes:
        if opcode.arg is None:
            argument = None
        elif opcode.name in ("GLOBAL", "INST"):
            argument = _READ_GLOBAL_NAME
        elif opcode.name in _BINARY_LENGTH_PREFIX:
            argument = _READ_PREFIXED
        else:
            argument = opcode.arg.reader
        if opcode.name == "STOP":
            handler = _STOP
        elif opcode.name in _LITERAL_OPCODES:
            handler = _LITERAL
        else:
            handler = getattr(_Walker, "_op_" + opcode.name, None)
        table[ord(opcode.code)] = (opcode, argument, handler)
    return table


_DISPATCH = _dispatch_table()
