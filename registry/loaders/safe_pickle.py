"""Load a tenant's pickle or joblib file without letting it run code.

Hand-written because of our threat model: tenants are untrusted, and a pickle runs
whatever its globals name. Loading is two steps:

1. ``audit_pickle_globals`` walks the opcodes (``pickle_audit.py``) and refuses the file,
   naming every global off the allow-list, before any object is built;
2. the file is read by an unpickler whose ``find_class`` refuses the same globals and
   whose ``persistent_load`` refuses everything, so a file the walk misread still cannot
   reach code.

Globals alone do not bound hostile state (BUILD on a class is ``setattr`` on it for the
whole process; ``bytes(<object array>)`` returns pointers), so the walk also refuses BUILD
on anything but an object the stream just constructed, non-canonical numpy dtypes and
converters called on non-literals (see ``pickle_audit``). Plain pickles keep the C
unpickler, which cannot be hooked per opcode, so these rules are enforced by the walk and
re-checked after loading, where a second line can see them:

- the converters are substituted by stand-ins that accept only bytes/str/int arguments;
- joblib files are read by the pure-Python unpickler joblib itself uses, where BUILD is
  guarded per opcode (only on an object this unpickler constructed, once);
- every allowed class and function the file names is compared, attribute by attribute,
  before and after the load: a change is undone and the file refused;
- ``structure.check_model_structures`` (run by ``formats.load_artifact``) refuses
  non-canonical dtypes and object arrays holding anything but plain values.

joblib files are a pickle whose ``NumpyArrayWrapper`` objects are each followed by raw
array bytes, or by a nested pickle for object-dtype arrays (fitted sklearn models have
those: ``feature_names_in_``, string ``classes_``), possibly compressed as a whole.
``joblib.load`` reads those nested pickles with an unpickler we do not control, so we
subclass joblib's ``NumpyUnpickler`` and read every array ourselves: raw bytes with numpy,
nested pickles with our restricted unpickler. Compressed files are opened with joblib's
own decompressors. We never call ``pickle.load``/``joblib.load``/``cloudpickle.load`` on
tenant bytes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import lzma
import os
import pickle
import types
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from joblib.numpy_pickle import NumpyUnpickler

from platform_site.errors import InvalidArtifact, ModelhostError, UnsafeArtifact

from .allowlist import (
    CHECK_ARRAY,
    FUNCTOOLS_PARTIAL,
    JOBLIB_ARRAY_WRAPPER,
    PARTIAL_FUNCTION,
    SUBSTITUTED_GLOBALS,
    TRANSFORMER_UFUNCS,
    canonical_global,
    is_allowed_global,
    partial_problem,
    resolve_allowed_global,
)
from .pickle_audit import PickleAudit, _Malformed, joblib_array_layout, walk_pickle_stream

# A path, the bytes, or an open descriptor of a seekable file (the fork server's check reads
# the one the web hands it; the caller keeps it open).
PickleSource = str | os.PathLike[str] | bytes | int


@dataclass(frozen=True)
class LoadedPickle:
    """The object a pickle or joblib file held, and what its audit found."""

    obj: Any
    audit: PickleAudit
    compression: str | None


def audit_pickle_globals(*, source: PickleSource) -> PickleAudit:
    """Walk a pickle/joblib file (path or bytes, compressed or not); return every global it names.

    Raises UnsafeArtifact naming every global off the allow-list, InvalidArtifact for a
    file that is not a readable pickle. Nothing in the file is executed.
    """
    with open_pickle_stream(source=source) as (stream, _compression):
        return walk_pickle_stream(stream)


def load_pickle(*, source: PickleSource) -> LoadedPickle:
    """Audit, then load, a pickle or joblib file with the enforcing unpicklers.

    Plain pickles go through the C unpickler; files with joblib arrays or compression
    through our ``NumpyUnpickler`` subclass. Errors as ``audit_pickle_globals``.
    """
    audit = audit_pickle_globals(source=source)
    shared = _SharedGlobals(audit.globals)
    with open_pickle_stream(source=source) as (stream, compression):
        try:
            if audit.joblib_arrays or compression:
                filename = os.fspath(source) if isinstance(source, (str, os.PathLike)) else ""
                unpickler: pickle.Unpickler | pickle._Unpickler = RestrictedJoblibUnpickler(filename, stream, True)
            else:
                unpickler = RestrictedUnpickler(stream)
            # Safe: the audit allowed every global in these bytes, and find_class enforces it again.
            obj = unpickler.load()
        except ModelhostError:
            raise
        except _Malformed as exc:
            raise InvalidArtifact(f"The file is not a pickle this platform can read: {exc}.") from exc
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
            raise InvalidArtifact(f"The model file could not be loaded: {type(exc).__name__}: {exc}") from exc
        finally:
            shared.restore_or_raise()
    return LoadedPickle(obj=obj, audit=audit, compression=compression)


class _SharedGlobals:
    """The attributes of every class and function a file names, to compare after loading.

    They are shared by every model in the process; a file that changed one (BUILD on a
    class) is refused, and the change undone, even if the walk had missed it.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.snapshots: list[tuple[str, Any, dict[str, Any]]] = []
        for full in names:
            module, _, name = full.rpartition(".")
            if (module, name) in SUBSTITUTED_GLOBALS or not is_allowed_global(module, name):
                continue
            target = resolve_allowed_global(module, name)
            namespace = getattr(target, "__dict__", None)
            if namespace is not None and not isinstance(target, types.ModuleType):
                self.snapshots.append((full, target, dict(namespace)))

    def restore_or_raise(self) -> None:
        changed = []
        for full, target, before in self.snapshots:
            after = target.__dict__
            for attribute in set(before) | set(after):
                if after.get(attribute, _MISSING) is before.get(attribute, _MISSING):
                    continue
                changed.append(f"{full}.{attribute}")
                if attribute in before:
                    setattr(target, attribute, before[attribute])
                else:
                    delattr(target, attribute)
        if changed:
            raise UnsafeArtifact(
                "The model file is refused: loading it changed "
                + ", ".join(sorted(changed))
                + ", which every model in the process shares."
            )


_MISSING = object()


@contextlib.contextmanager
def open_pickle_stream(*, source: PickleSource) -> Iterator[tuple[BinaryIO, str | None]]:
    """Yield (readable stream, compression name or None) for a path or bytes.

    Compression is recognised by joblib's magic numbers and undone by joblib's own
    decompressors; joblib < 0.9.3's "ZF" format and a missing lz4 are InvalidArtifact.
    """
    from joblib.compressor import _COMPRESSORS
    from joblib.numpy_pickle_utils import _buffered_read_file, _detect_compressor

    with contextlib.ExitStack() as stack:
        if isinstance(source, bytes):
            raw: BinaryIO = io.BytesIO(source)
        elif isinstance(source, int):
            raw = stack.enter_context(open(source, "rb", closefd=False))
            raw.seek(0)  # each pass (audit, then load) reads the file from its start
        else:
            raw = stack.enter_context(open(Path(source), "rb"))
        if not raw.read(1):
            raise InvalidArtifact("The model file is empty.")
        raw.seek(0)
        compressor = _detect_compressor(raw)
        if compressor == "compat":
            raise InvalidArtifact("The file was written by joblib older than 0.9.3; load it with that joblib and save it again.")
        if compressor == "not-compressed":
            yield raw, None
            return
        try:
            decompressed = _COMPRESSORS[compressor].decompressor_file(raw)
        except ValueError as exc:  # e.g. lz4 not installed
            raise InvalidArtifact(f"The {compressor}-compressed file cannot be read here: {exc}") from exc
        stream = stack.enter_context(_buffered_read_file(decompressed))
        try:
            yield stream, compressor
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:  # corrupt data surfaces while reading
            raise InvalidArtifact(f"The {compressor}-compressed file is corrupt: {exc}") from exc


# --- the enforcing unpicklers ----------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: protocols 0-2 write bytes as encode(str, "latin1")."""
    if encoding not in ("latin1", "latin-1") or errors != "strict" or not isinstance(text, str):
        raise UnsafeArtifact(
            f"The model file calls _codecs.encode with encoding {encoding!r}; only latin1 is allowed.",
            refused_globals=["_codecs.encode"],
        )
    return text.encode("latin-1")


def _literal_only(name: str, convert: Any) -> Any:
    """Stand-in for a converter that, on an object array, returns its pointers as bytes or text."""

    def call(*args: Any) -> Any:
        if not all(isinstance(arg, (bytes, bytearray, str, int)) for arg in args):
            kinds = ", ".join(sorted({type(arg).__name__ for arg in args}))
            raise UnsafeArtifact(
                f"The model file calls {name} on {kinds}; it may only convert bytes, text or numbers.",
                refused_globals=[name],
            )
        return convert(*args)

    return call


def _frombuffer_of_bytes(buffer: Any, dtype: Any, shape: Any, order: Any) -> Any:
    """Stand-in for numpy's ``_frombuffer``: only bytes, never another object's memory."""
    import numpy as np

    from .dtypes import dtype_problem

    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype_problem(dtype):
        raise UnsafeArtifact(
            f"The model file builds an array from a {type(buffer).__name__} buffer; only bytes of a canonical dtype are allowed.",
            refused_globals=["numpy._core.numeric._frombuffer"],
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


@functools.cache
def _stand_ins() -> dict[tuple[str, str], Any]:
    import numpy as np

    return {
        **{
            (module, name): _literal_only(f"{module}.{name}", convert)
            for (module, name), convert in (
                (("builtins", "bytes"), bytes),
                (("builtins", "bytearray"), bytearray),
                (("numpy", "str_"), np.str_),
                (("numpy", "bytes_"), np.bytes_),
            )
        },
        ("numpy._core.numeric", "_frombuffer"): _frombuffer_of_bytes,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer_of_bytes,
    }


def _checked_tree(n_features: Any, n_classes: Any, n_outputs: Any) -> Any:
    """Stand-in for ``sklearn.tree._tree.Tree(...)``: its Cython constructor copies
    ``n_outputs`` entries of ``n_classes`` without a bounds check, so check first."""
    import numpy as np
    from sklearn.tree._tree import Tree

    classes = np.asarray(n_classes)
    if (
        type(n_features) is not int
        or type(n_outputs) is not int
        or not 0 < n_outputs == len(classes)
        or classes.ndim != 1
        or classes.dtype.kind not in "iu"
    ):
        raise InvalidArtifact("The model's decision tree is corrupt: its class counts do not match its outputs.")
    return Tree(n_features, classes, n_outputs)


class CheckedPartial(functools.partial):
    """Stand-in for ``functools.partial``: only the partial scikit-learn writes (``allowlist.partial_problem``).

    Checked when built (REDUCE) and when given state (BUILD), so the C unpickler enforces it
    too; it behaves as the partial it checks and pickles back as a plain ``functools.partial``
    (the serving artifact names no class of ours).
    """

    def __new__(cls, func: Any, /, *args: Any, **keywords: Any) -> CheckedPartial:
        _refuse_partial(func, args, keywords)
        return super().__new__(cls, _real_check_array(func), *args, **keywords)

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 4) or state[3]:
            raise UnsafeArtifact(
                "The model file is refused: it gives a functools.partial a state that is not (function, args, keywords).",
                refused_globals=["functools.partial"],
            )
        func, args, keywords, _ = state
        if not isinstance(args, tuple) or not isinstance(keywords, (dict, type(None))):
            raise UnsafeArtifact(
                "The model file is refused: it gives a functools.partial arguments that are not plain data.",
                refused_globals=["functools.partial"],
            )
        _refuse_partial(func, args, keywords or {})
        super().__setstate__((_real_check_array(func), args, keywords, None))

    def __reduce__(self) -> tuple[Any, ...]:
        return functools.partial, (self.func,), (self.func, self.args, self.keywords or None, None)


def check_array_while_loading(*args: Any, **keywords: Any) -> Any:
    """Stand-in for ``check_array`` as the unpickler hands it out: only a partial may hold it, never call it."""
    raise UnsafeArtifact(
        f"The model file is refused: it calls {PARTIAL_FUNCTION} while loading; it may only be the function of a "
        "functools.partial.",
        refused_globals=[PARTIAL_FUNCTION],
    )


def _real_check_array(func: Any) -> Any:
    from sklearn.utils.validation import check_array

    return check_array if func is check_array_while_loading else func


def _refuse_partial(func: Any, args: tuple[Any, ...], keywords: dict[str, Any]) -> None:
    problem = partial_problem(
        func=_dotted_name(func), args=args, keywords={str(key): _partial_value(value) for key, value in keywords.items()}
    )
    if problem is not None:
        raise UnsafeArtifact(f"The model file is refused: {problem}.", refused_globals=["functools.partial"])


def _dotted_name(value: Any) -> str:
    if value is check_array_while_loading:
        return PARTIAL_FUNCTION
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(name, str)):
        return "a value built at load time"
    module, name = canonical_global(module, name)
    # Only an allowed global is the object its name says; anything else is named by its type.
    if not is_allowed_global(module, name) or resolve_allowed_global(module, name) is not value:
        return f"a {type(value).__name__} built at load time"
    return f"{module}.{name}"


def _partial_value(value: Any) -> Any:
    """As ``pickle_audit._partial_value``: classes by dotted name, lists as tuples, literals as they are."""
    if isinstance(value, type):
        return _dotted_name(value)
    if isinstance(value, (list, tuple)):
        return tuple(_partial_value(item) for item in value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return f"<a {type(value).__name__} built at load time>"


class UfuncReference:
    """Stand-in for an allowed numpy ufunc (``allowlist.TRANSFORMER_UFUNCS``): inert until bound.

    ``structure.check_model_structures`` replaces it with the real ufunc where a
    FunctionTransformer or TransformedTargetRegressor holds it; anywhere else it stays
    inert: calling or pickling it is refused.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **keywords: Any) -> Any:
        raise UnsafeArtifact(
            f"The model file is refused: it calls {self.name} where only a FunctionTransformer's func or inverse_func "
            "may hold it.",
            refused_globals=[self.name],
        )

    def __reduce__(self) -> Any:
        raise UnsafeArtifact(
            f"The model file is refused: it holds {self.name} where only a FunctionTransformer's func or inverse_func may.",
            refused_globals=[self.name],
        )

    def resolve(self) -> Any:
        """The real ufunc; for the post-load walk, which checked where this reference sits."""
        import numpy as np

        return getattr(np, self.name.rpartition(".")[2])


class JoblibArrayPlaceholder:
    """What ``joblib.numpy_pickle.NumpyArrayWrapper`` unpickles to; replaced by its array at BUILD.

    Calling it is refused: joblib only ever writes it with NEWOBJ (or object.__new__ in
    protocols 0-1) plus a state dict, which is all the audit accepts too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise InvalidArtifact("The file builds a joblib array wrapper by calling it, which joblib never does.")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise InvalidArtifact("A joblib array wrapper's state is not a dict.")
        self.__dict__.update(state)


class _AllowListMixin:
    """find_class/persistent_load shared by every unpickler that reads tenant bytes."""

    allows_array_wrapper = False

    def find_class(self, module: str, name: str) -> Any:
        module, name = canonical_global(module, name)
        if not is_allowed_global(module, name):
            raise UnsafeArtifact(refused_globals=[f"{module}.{name}"])
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) == ("sklearn.tree._tree", "Tree"):
            return _checked_tree
        if (module, name) == FUNCTOOLS_PARTIAL:
            return CheckedPartial
        if (module, name) == CHECK_ARRAY:
            return check_array_while_loading
        if (module, name) in TRANSFORMER_UFUNCS:
            return UfuncReference(f"{module}.{name}")
        if (module, name) == JOBLIB_ARRAY_WRAPPER:
            if not self.allows_array_wrapper:
                raise InvalidArtifact("A joblib array wrapper appears where joblib never writes one.")
            return JoblibArrayPlaceholder
        stand_in = _stand_ins().get((module, name))
        if stand_in is not None:
            return stand_in
        return resolve_allowed_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeArtifact("The model file uses pickle persistent ids, which the platform refuses.")


class RestrictedUnpickler(_AllowListMixin, pickle.Unpickler):
    """The C unpickler, restricted to the allow-list; for plain pickles."""


_NOT_BUILDABLE = (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType, types.MethodType)


class _BuildGuardMixin:
    """BUILD only on an object this unpickler constructed (REDUCE/NEWOBJ/NEWOBJ_EX/OBJ/INST), once.

    For the pure-Python unpicklers; the walk enforces the same rule for the C unpickler.
    Constructed objects are kept (not just their ids) so an id cannot be reused.
    """

    def _constructed_now(self) -> None:
        if not hasattr(self, "_constructed"):
            self._constructed: dict[int, Any] = {}
            self._built: set[int] = set()
        self._constructed[id(self.stack[-1])] = self.stack[-1]

    def _guard_build(self) -> None:
        target = self.stack[-2]
        constructed = getattr(self, "_constructed", {})
        if isinstance(target, _NOT_BUILDABLE) or id(target) not in constructed or id(target) in self._built:
            what = getattr(target, "__qualname__", type(target).__qualname__)
            raise UnsafeArtifact(
                f"The model file is refused: it applies BUILD state to {what}, which is not an object it just constructed."
            )
        self._built.add(id(target))


def _guarded_dispatch(base: dict[int, Any]) -> dict[int, Any]:
    dispatch = base.copy()
    for opcode in (pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST):
        original = base[opcode[0]]

        def constructing(self: Any, original: Any = original) -> None:
            original(self)
            self._constructed_now()

        dispatch[opcode[0]] = constructing
    original_build = base[pickle.BUILD[0]]

    def build(self: Any) -> None:
        self._guard_build()
        original_build(self)
        _check_built_dtype(self.stack[-1])

    dispatch[pickle.BUILD[0]] = build
    return dispatch


def _check_built_dtype(value: Any) -> None:
    import numpy as np

    from .dtypes import dtype_problem

    if isinstance(value, np.dtype):
        problem = dtype_problem(value)
        if problem is not None:
            raise UnsafeArtifact(f"The model file is refused: it builds a numpy dtype whose {problem}.")


class _RestrictedPurePythonUnpickler(_BuildGuardMixin, _AllowListMixin, pickle._Unpickler):
    """The pure-Python unpickler, restricted; reads the nested pickle of a joblib object array.

    Pure Python because it must stop exactly at the nested STOP, leaving the outer stream
    where joblib left it.
    """

    dispatch = _guarded_dispatch(pickle._Unpickler.dispatch)


class RestrictedJoblibUnpickler(_BuildGuardMixin, _AllowListMixin, NumpyUnpickler):
    """joblib's NumpyUnpickler, restricted, reading every array itself (see module docstring)."""

    allows_array_wrapper = True
    dispatch = _guarded_dispatch(NumpyUnpickler.dispatch)

    def load_build(self) -> None:
        self._guard_build()
        pickle._Unpickler.load_build(self)
        _check_built_dtype(self.stack[-1])
        if isinstance(self.stack[-1], JoblibArrayPlaceholder):
            wrapper = self.stack.pop()
            self.stack.append(self._read_array(wrapper))

    dispatch[pickle.BUILD[0]] = load_build

    def _read_array(self, wrapper: JoblibArrayPlaceholder) -> Any:
        import numpy as np
        from joblib.numpy_pickle_utils import BUFFER_SIZE, _ensure_native_byte_order, _read_bytes

        state = dict(wrapper.__dict__)
        if state.get("subclass") not in (np.ndarray, np.matrix):
            raise InvalidArtifact("A joblib array whose subclass is not numpy.ndarray or numpy.matrix.")
        layout = joblib_array_layout(state, checked_dtypes=self.__dict__.setdefault("_checked_dtypes", {}))
        frame = self._unframer.current_frame
        if frame is not None and _bytes_left(frame):
            raise InvalidArtifact("The file is not a pickle this platform can read: joblib array data inside a frame.")
        if layout.dtype.hasobject:
            inner = _RestrictedPurePythonUnpickler(self.file_handle)
            # Safe: a restricted unpickler; the audit walked this nested pickle too.
            array = inner.load()
            inner_frame = inner._unframer.current_frame
            if inner_frame is not None and _bytes_left(inner_frame):
                raise InvalidArtifact("The file is not a pickle this platform can read: data after an object array.")
            if not isinstance(array, np.ndarray):
                raise InvalidArtifact("A joblib object array's payload is not an array.")
        else:
            if layout.alignment is not None:
                padding = self.file_handle.read(1)
                if padding and padding[0]:
                    _read_bytes(self.file_handle, padding[0], "array padding")
            # Read in bounded chunks, as joblib does: crc32 breaks on reads over 4 GiB.
            per_read = BUFFER_SIZE // min(BUFFER_SIZE, layout.dtype.itemsize or 1)
            array = np.empty(layout.count, dtype=layout.dtype)
            for start in range(0, layout.count, per_read):
                count = min(per_read, layout.count - start)
                data = _read_bytes(self.file_handle, count * layout.dtype.itemsize, "array data")
                array[start : start + count] = np.frombuffer(data, dtype=layout.dtype, count=count)
            if layout.order == "F":
                array = array.reshape(layout.shape[::-1]).transpose()
            else:
                array = array.reshape(layout.shape)
        return _ensure_native_byte_order(array)


def _bytes_left(frame: io.BytesIO) -> int:
    position = frame.tell()
    end = frame.seek(0, io.SEEK_END)
    frame.seek(position)
    return end - position


__all__ = [
    "JoblibArrayPlaceholder",
    "LoadedPickle",
    "PickleAudit",
    "RestrictedJoblibUnpickler",
    "RestrictedUnpickler",
    "audit_pickle_globals",
    "load_pickle",
    "open_pickle_stream",
]
