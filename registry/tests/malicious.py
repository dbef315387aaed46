"""A corpus of hostile model files for the loader tests.

Every "live" case, loaded with plain pickle or joblib, creates ``marker`` (a file in the
test's tmp_path): the tests prove that first, so "the marker never exists" after our
loaders refuse a case is a claim that can fail. Each case names the exact globals our
audit must refuse.
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import io
import os
import pickle
import shlex
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

# The name pickle writes for os.system: the function lives in posix on Linux.
OS_SYSTEM = f"{os.system.__module__}.system"


class Reduce:
    """Pickles as ``func(*args)``: what a malicious ``__reduce__`` returns."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args

    def __call__(self, *args: Any) -> Any:
        # Only so pickle accepts a Reduce as another Reduce's callable; never called here.
        raise NotImplementedError


def touch_command(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


@dataclass(frozen=True)
class Case:
    """One hostile file: ``build(marker)`` returns its bytes."""

    id: str
    build: Callable[[Path], bytes]
    refused: tuple[str, ...]
    is_joblib: bool = False
    # Loading it with plain pickle/joblib really runs the payload (checked by a control test).
    is_live: bool = True
    # Held open while the case is built and loaded (copyreg extension codes).
    context: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)


# --- payloads ------------------------------------------------------------------------------


def os_system(marker: Path) -> Reduce:
    return Reduce(os.system, touch_command(marker))


def eval_payload(marker: Path) -> Reduce:
    return Reduce(builtins.eval, touch_code(marker))


def exec_payload(marker: Path) -> Reduce:
    return Reduce(builtins.exec, touch_code(marker))


def popen_payload(marker: Path) -> Reduce:
    return Reduce(subprocess.Popen, ["touch", str(marker)])


def import_getattr_chain(marker: Path) -> Reduce:
    """``getattr(__import__('os'), 'system')('touch marker')`` as nested reduces."""
    system = Reduce(builtins.getattr, Reduce(builtins.__import__, "os"), "system")
    return Reduce(system, touch_command(marker))


def tiny_pipeline() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.arange(40, dtype=float).reshape(20, 2)
    y = np.array([0, 1] * 10)
    return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression())]).fit(X, y)


def pipeline_with_payload(marker: Path) -> Any:
    pipeline = tiny_pipeline()
    pipeline.named_steps["scale"].evil_ = os_system(marker)
    return pipeline


def pipeline_with_object_array_payload(marker: Path) -> Any:
    pipeline = tiny_pipeline()
    pipeline.named_steps["model"].evil_ = np.array(["harmless", os_system(marker)], dtype=object)
    return pipeline


def joblib_bytes(obj: Any, *, compress: int | tuple[str, int] = 0) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer, compress=compress)
    return buffer.getvalue()


# --- hand-written opcode streams -----------------------------------------------------------------


def _unicode(text: str) -> bytes:
    data = text.encode("utf-8")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def global_opcode_os_system(marker: Path) -> bytes:
    """Protocol 0, as a human would write it: ``cos\\nsystem`` then REDUCE."""
    return b"cos\nsystem\n(V" + touch_command(marker).encode() + b"\ntR."


def inst_opcode_os_system(marker: Path) -> bytes:
    """The INST opcode: calls ``os.system`` with the marked arguments."""
    return b"(V" + touch_command(marker).encode() + b"\nios\nsystem\n."


def stack_global_memoized(marker: Path) -> bytes:
    """STACK_GLOBAL whose operands come from the memo, with decoy strings pushed in between.

    A scanner that takes "the last two strings pushed" reads sklearn.pipeline.Pipeline.
    """
    return (
        pickle.PROTO
        + b"\x04"
        + _unicode("os")
        + pickle.MEMOIZE
        + pickle.POP
        + _unicode("system")
        + pickle.MEMOIZE
        + pickle.POP
        + _unicode("sklearn.pipeline")
        + _unicode("Pipeline")
        + pickle.POP
        + pickle.POP
        + pickle.BINGET
        + b"\x00"
        + pickle.BINGET
        + b"\x01"
        + pickle.STACK_GLOBAL
        + _unicode(touch_command(marker))
        + pickle.TUPLE1
        + pickle.REDUCE
        + pickle.STOP
    )


def stack_global_computed_name(marker: Path) -> bytes:
    """STACK_GLOBAL whose module name is built by a call: nothing static can name it."""
    return (
        pickle.PROTO
        + b"\x04"
        + pickle.GLOBAL
        + b"numpy\nstr_\n"
        + _unicode("os")
        + pickle.TUPLE1
        + pickle.REDUCE
        + _unicode("system")
        + pickle.STACK_GLOBAL
        + _unicode(touch_command(marker))
        + pickle.TUPLE1
        + pickle.REDUCE
        + pickle.STOP
    )


@contextlib.contextmanager
def registered_extension(module: str, name: str, code: int) -> Iterator[None]:
    """Register a copyreg extension code for the duration (EXT1/EXT2/EXT4 opcodes)."""
    copyreg.add_extension(module, name, code)
    try:
        yield
    finally:
        copyreg.remove_extension(module, name, code)


def _ext_case(code: int, opcode: str) -> Case:
    module, name = OS_SYSTEM.rsplit(".", 1)
    return Case(
        id=f"ext_opcode_{opcode}",
        build=lambda marker: pickle.dumps(os_system(marker), protocol=2),
        refused=(OS_SYSTEM,),
        context=lambda: registered_extension(module, name, code),
    )


def cloudpickled_lambda(marker: Path) -> bytes:
    import cloudpickle

    command = touch_command(marker)
    return cloudpickle.dumps(Reduce(lambda: os.system(command)))


# cloudpickle 3.1.2 rebuilds a lambda from these; each one is refused.
CLOUDPICKLE_LAMBDA_GLOBALS = (
    "cloudpickle.cloudpickle._builtin_type",
    "cloudpickle.cloudpickle._function_setstate",
    "cloudpickle.cloudpickle._make_cell",
    "cloudpickle.cloudpickle._make_empty_cell",
    "cloudpickle.cloudpickle._make_function",
    "cloudpickle.cloudpickle.subimport",
)


def corpus() -> list[Case]:
    """Return every hostile case, with readable ids."""
    cases = [
        Case("os_system_global_opcode", global_opcode_os_system, ("os.system",)),
        Case("os_system_inst_opcode", inst_opcode_os_system, ("os.system",)),
        Case("stack_global_memoized_strings", stack_global_memoized, ("os.system",)),
        Case(
            "import_getattr_chain",
            lambda marker: pickle.dumps(import_getattr_chain(marker)),
            ("builtins.__import__", "builtins.getattr"),
        ),
        Case(
            "every_refused_global_named",
            lambda marker: pickle.dumps(
                [os_system(marker), eval_payload(marker), popen_payload(marker), import_getattr_chain(marker)]
            ),
            tuple(sorted((OS_SYSTEM, "builtins.eval", "subprocess.Popen", "builtins.__import__", "builtins.getattr"))),
        ),
        Case("pipeline_step_attribute", lambda marker: pickle.dumps(pipeline_with_payload(marker)), (OS_SYSTEM,)),
        Case(
            "joblib_top_level",
            lambda marker: joblib_bytes(pipeline_with_payload(marker)),
            (OS_SYSTEM,),
            is_joblib=True,
        ),
        Case(
            "joblib_object_array",
            lambda marker: joblib_bytes(pipeline_with_object_array_payload(marker)),
            (OS_SYSTEM,),
            is_joblib=True,
        ),
        Case(
            "joblib_object_array_zlib",
            lambda marker: joblib_bytes(pipeline_with_object_array_payload(marker), compress=3),
            (OS_SYSTEM,),
            is_joblib=True,
        ),
        Case(
            "joblib_object_array_eval_gzip",
            lambda marker: joblib_bytes(np.array([eval_payload(marker)], dtype=object), compress=("gzip", 3)),
            ("builtins.eval",),
            is_joblib=True,
        ),
        Case("cloudpickle_lambda", cloudpickled_lambda, CLOUDPICKLE_LAMBDA_GLOBALS),
        _ext_case(0xF0, "EXT1"),
        _ext_case(0xF00D, "EXT2"),
        _ext_case(0x0BADF00D, "EXT4"),
    ]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for payload, refused in (
            (os_system, OS_SYSTEM),
            (eval_payload, "builtins.eval"),
            (exec_payload, "builtins.exec"),
            (popen_payload, "subprocess.Popen"),
        ):
            cases.append(
                Case(
                    f"{refused}-protocol{protocol}",
                    lambda marker, payload=payload, protocol=protocol: pickle.dumps(payload(marker), protocol=protocol),
                    (refused,),
                )
            )
    return cases


def load_unsafely(data: bytes, *, is_joblib: bool) -> Any:
    """Load with plain joblib/pickle: ONLY for the control test that proves a payload is live."""
    if is_joblib:
        return joblib.load(io.BytesIO(data))
    return pickle.loads(data)


# --- hostile state: files that name only allowed globals --------------------------------------
#
# An allow-list of globals does not bound what BUILD (``__setstate__``) and the allowed
# callables do with hostile arguments. Each case below names only globals that were on the
# allow-list, and does its harm under plain pickle/joblib: ``harm`` says which harm the
# control test shows ("segfault": predicting dereferences pointers the file chose;
# "leak": the loaded model holds the addresses of ``None`` and ``True``; "tamper": a class
# shared by every tenant in the process is changed).

# An address no process maps: dereferencing it is a segmentation fault.
WILD_POINTER = 0x4141414141414141


class ReduceWithState:
    """Pickles as ``func(*args)`` followed by BUILD with ``state``."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, tuple[Any, ...], Any]:
        return self.func, self.args, self.state


@dataclass(frozen=True)
class StateCase:
    """A hostile file of allowed globals: ``build()`` returns its bytes; ``refusal`` is in the error."""

    id: str
    build: Callable[[], bytes]
    harm: str
    refusal: str
    is_joblib: bool = False


def _object_dtype_without_flags() -> ReduceWithState:
    """``numpy.dtype('O8')`` whose BUILD state clears its flags: ``hasobject`` becomes False."""
    return ReduceWithState(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))


def _array_of_wild_pointers(count: int) -> ReduceWithState:
    from numpy._core.multiarray import _reconstruct

    raw = struct.pack(f"<{count}Q", *[WILD_POINTER] * count)
    return ReduceWithState(_reconstruct, (np.ndarray, (0,), b"b"), (1, (count,), _object_dtype_without_flags(), False, raw))


FEATURE_FRAME_COLUMNS = ["a", "b"]


def _feature_frame() -> Any:
    import pandas as pd

    return pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})


def object_pointer_regressor() -> bytes:
    """The memory-corruption reproduction: a KNeighborsRegressor (fitted on a DataFrame, so the
    sandbox had no rows to try) whose ``_y`` holds pointers the file chose."""
    from sklearn.neighbors import KNeighborsRegressor

    model = KNeighborsRegressor(n_neighbors=1).fit(_feature_frame(), [0.0, 1.0, 2.0, 3.0])
    model._y = _array_of_wild_pointers(4)
    return pickle.dumps(model, protocol=5)


def object_pointer_regressor_joblib() -> bytes:
    """The same pointers through joblib: the array wrapper's dtype is 'O8' with cleared flags,
    so joblib reads raw bytes into an object array (patched from a uint64 array, same length)."""
    from sklearn.neighbors import KNeighborsRegressor

    model = KNeighborsRegressor(n_neighbors=1).fit(_feature_frame(), [0.0, 1.0, 2.0, 3.0])
    model._y = np.full(4, WILD_POINTER, dtype=np.uint64)
    data = joblib_bytes(model)
    dtype_call = b"\x8c\x02u8\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01<"
    assert data.count(dtype_call) == 1
    return data.replace(dtype_call, b"\x8c\x02O8\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|")


def _object_array() -> np.ndarray:
    # Its buffer is the addresses of None and True.
    return np.array([None, True], dtype=object)


def _classifier_with_classes(classes: Any) -> bytes:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 1, 0, 1])
    model.classes_ = classes
    return pickle.dumps(model, protocol=4)


def bytes_of_object_array_as_classes() -> bytes:
    """The address-disclosure reproduction: ``numpy.str_(builtins.bytes(<object ndarray>))`` as a class label."""
    leaked = Reduce(np.str_, Reduce(builtins.bytes, _object_array()))
    return _classifier_with_classes(np.array([leaked, "other"], dtype=object))


def numpy_bytes_of_object_array_as_classes() -> bytes:
    return _classifier_with_classes(np.array([Reduce(np.bytes_, _object_array()), b"other"], dtype=object))


def bytearray_of_object_array_as_classes() -> bytes:
    return _classifier_with_classes(np.array([Reduce(builtins.bytearray, _object_array()), "other"], dtype=object))


def frombuffer_of_object_array_as_classes() -> bytes:
    from numpy._core.numeric import _frombuffer

    return _classifier_with_classes(Reduce(_frombuffer, _object_array(), np.dtype("u8"), (2,), "C"))


def ndarray_over_object_buffer_as_classes() -> bytes:
    return _classifier_with_classes(Reduce(np.ndarray, (2,), np.dtype("u8"), _object_array()))


def _class_build(
    module: str, name: str, attribute: str, value_module: str, value_name: str, *, through_memo: bool = False
) -> bytes:
    """Opcodes that BUILD a *class* with slot state ``{attribute: value}``: setattr on the class.

    ``through_memo``: the class is memoized, popped and fetched back before its BUILD.
    """
    memo = pickle.BINPUT + b"\xf0" + pickle.POP + pickle.BINGET + b"\xf0" if through_memo else b""
    return (
        pickle.GLOBAL
        + f"{module}\n{name}\n".encode()
        + memo
        + pickle.NONE
        + pickle.EMPTY_DICT
        + _unicode(attribute)
        + pickle.GLOBAL
        + f"{value_module}\n{value_name}\n".encode()
        + pickle.SETITEM
        + pickle.TUPLE2
        + pickle.BUILD
    )


def _pair_with_model(prefix: bytes, model: Any) -> bytes:
    """A protocol 2 pickle of ``(<prefix's object>, model)``; the model's own memo is untouched."""
    body = pickle.dumps(model, protocol=2)
    assert body[:2] == pickle.PROTO + b"\x02" and body[-1:] == pickle.STOP
    return pickle.PROTO + b"\x02" + prefix + body[2:-1] + pickle.TUPLE2 + pickle.STOP


def tiny_hist_gradient_boosting() -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = np.arange(40, dtype=float).reshape(20, 2)
    return HistGradientBoostingRegressor(max_iter=5, random_state=0).fit(X, X[:, 0] * 50.0)


def class_build_on_identity_link() -> bytes:
    """The cross-tenant reproduction: ``IdentityLink.inverse = numpy.int8`` for the whole process."""
    prefix = _class_build("sklearn._loss.link", "IdentityLink", "inverse", "numpy", "int8")
    return _pair_with_model(prefix, tiny_hist_gradient_boosting())


def class_build_on_logit_link_through_memo() -> bytes:
    """``LogitLink.inverse = numpy.int8``, the class fetched from the memo: every tenant's
    HistGradientBoostingClassifier returns probabilities wrapped to int8."""
    prefix = _class_build("sklearn._loss.link", "LogitLink", "inverse", "numpy", "int8", through_memo=True)
    return _pair_with_model(prefix, tiny_pipeline())


def object_array_holding_a_slice() -> bytes:
    """An object array may hold only plain values; these class labels are slices, which
    predict hands back to a caller expecting JSON values."""
    return _classifier_with_classes(np.array([slice(0, 1), slice(1, 2)], dtype=object))


def state_corpus() -> list[StateCase]:
    """Every hostile-state case, with readable ids."""
    return [
        StateCase("dtype_object_flags_cleared", object_pointer_regressor, "segfault", "numpy dtype object"),
        StateCase(
            "joblib_dtype_object_flags_cleared",
            object_pointer_regressor_joblib,
            "segfault",
            "numpy dtype object",
            is_joblib=True,
        ),
        StateCase("bytes_of_object_array_in_str", bytes_of_object_array_as_classes, "leak", "builtins.bytes"),
        StateCase("numpy_bytes_of_object_array", numpy_bytes_of_object_array_as_classes, "leak", "numpy.bytes_"),
        StateCase("bytearray_of_object_array", bytearray_of_object_array_as_classes, "leak", "builtins.bytearray"),
        StateCase("frombuffer_of_object_array", frombuffer_of_object_array_as_classes, "leak", "numpy._core.numeric._frombuffer"),
        StateCase("ndarray_over_object_buffer", ndarray_over_object_buffer_as_classes, "leak", "numpy.ndarray"),
        StateCase("class_build_identity_link", class_build_on_identity_link, "tamper", "sklearn._loss.link.IdentityLink"),
        StateCase(
            "class_build_logit_link_through_memo",
            class_build_on_logit_link_through_memo,
            "tamper",
            "sklearn._loss.link.LogitLink",
        ),
        StateCase(
            "object_array_holding_a_slice", object_array_holding_a_slice, "foreign", "an object array holds a builtins.slice"
        ),
    ]


# --- functools.partial: only the one HistGradientBoosting writes ------------------------------------
#
# HistGradientBoosting* fitted with categorical features keeps
# FunctionTransformer(partial(check_array, dtype=[np.float64], ensure_all_finite=False)); the
# allow-list takes that partial and no other. Each case hides its partial where scikit-learn
# keeps its own (the FunctionTransformer of a fitted pipeline) and names why it is refused.


@dataclass(frozen=True)
class PartialCase:
    id: str
    build: Callable[[Path], bytes]
    reason: str  # the refusal's detail after "The model file is refused: "
    # Global names the audit refuses besides the partial (the partial's function may be one).
    refused: tuple[str, ...] = ()


ALLOWED_PARTIAL = "only sklearn.utils.validation.check_array with dtype=[numpy.float64], ensure_all_finite=False"


def _function_transformer_pipeline(func: Any) -> bytes:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.arange(40, dtype=float).reshape(20, 2)
    y = np.array([0, 1] * 10)
    fitted = Pipeline([("check", FunctionTransformer()), ("model", LogisticRegression())]).fit(X, y)
    fitted.named_steps["check"].func = func  # set after fitting: the payload must not run here
    return pickle.dumps(fitted, protocol=2)


def _check_array_partial(**keywords: Any) -> Any:
    import functools

    from sklearn.utils.validation import check_array

    return functools.partial(check_array, **keywords)


def partial_corpus() -> list[PartialCase]:
    import functools

    from sklearn.linear_model import LogisticRegression
    from sklearn.utils.validation import check_array

    check_array_name = "sklearn.utils.validation.check_array"
    return [
        PartialCase(
            "partial_of_os_system_called_while_loading",
            lambda marker: pickle.dumps(Reduce(functools.partial(os.system, touch_command(marker)))),
            f"it refers to globals outside the allow-list: {OS_SYSTEM}; it builds a functools.partial of {OS_SYSTEM}; "
            f"{ALLOWED_PARTIAL} (what HistGradientBoosting writes) is allowed",
            refused=(OS_SYSTEM,),
        ),
        PartialCase(
            "partial_of_an_allowed_class",
            lambda marker: _function_transformer_pipeline(functools.partial(LogisticRegression, C=3.0)),
            "it builds a functools.partial of sklearn.linear_model._logistic.LogisticRegression; "
            f"{ALLOWED_PARTIAL} (what HistGradientBoosting writes) is allowed",
        ),
        PartialCase(
            "partial_of_an_allowed_builtin",
            lambda marker: _function_transformer_pipeline(functools.partial(bytes)),
            f"it builds a functools.partial of builtins.bytes; {ALLOWED_PARTIAL} (what HistGradientBoosting writes) is allowed",
        ),
        PartialCase(
            "check_array_with_another_keyword",
            lambda marker: _function_transformer_pipeline(_check_array_partial(dtype=[np.float64], accept_sparse=True)),
            f"it builds a functools.partial of {check_array_name} with keyword 'accept_sparse'; {ALLOWED_PARTIAL} is allowed",
        ),
        PartialCase(
            "check_array_with_another_dtype",
            lambda marker: _function_transformer_pipeline(_check_array_partial(dtype=object, ensure_all_finite=False)),
            f"it builds a functools.partial of {check_array_name} with dtype='builtins.object'; {ALLOWED_PARTIAL} is allowed",
        ),
        PartialCase(
            "check_array_with_ensure_all_finite_zero",
            lambda marker: _function_transformer_pipeline(_check_array_partial(dtype=[np.float64], ensure_all_finite=0)),
            f"it builds a functools.partial of {check_array_name} with ensure_all_finite=0; {ALLOWED_PARTIAL} is allowed",
        ),
        PartialCase(
            "check_array_with_positional_arguments",
            lambda marker: _function_transformer_pipeline(functools.partial(check_array, [[1.0]])),
            f"it builds a functools.partial of {check_array_name} with positional arguments; {ALLOWED_PARTIAL} is allowed",
        ),
        PartialCase(
            "check_array_swapped_for_a_class_in_the_state",
            lambda marker: _function_transformer_pipeline(
                ReduceWithState(functools.partial, (check_array,), (LogisticRegression, (), {}, None))
            ),
            "it builds a functools.partial of sklearn.linear_model._logistic.LogisticRegression; "
            f"{ALLOWED_PARTIAL} (what HistGradientBoosting writes) is allowed",
        ),
        PartialCase(
            "check_array_partial_with_attributes",
            lambda marker: _function_transformer_pipeline(
                ReduceWithState(functools.partial, (check_array,), (check_array, (), {"dtype": [np.float64]}, {"extra": 1}))
            ),
            "it gives a functools.partial attributes of its own",
        ),
        PartialCase(
            "check_array_called_while_loading",
            lambda marker: _function_transformer_pipeline(Reduce(check_array, [[1.0, 2.0]])),
            f"it calls {check_array_name} while loading; it may only be the function of a functools.partial",
        ),
    ]


# --- numpy ufuncs: only log1p, expm1, log, exp, sqrt, absolute, only as a transformer's func ---------


def _regression_data() -> tuple[np.ndarray, np.ndarray]:
    X = np.abs(np.arange(60, dtype=float).reshape(20, 3)) / 10
    return X, X.sum(axis=1)


def ufunc_as_an_estimator_attribute() -> bytes:
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(*_regression_data())
    model.postprocess_ = np.exp  # an allowed ufunc, but not where a transformer holds it
    return pickle.dumps(model, protocol=4)


def ufunc_called_while_loading() -> bytes:
    return pickle.dumps(Reduce(np.sqrt, 4.0), protocol=2)


def ufunc_off_the_list() -> bytes:
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    return pickle.dumps(make_pipeline(FunctionTransformer(np.sin), LinearRegression()).fit(*_regression_data()))


# (id, build, detail, refused_globals) as load_serving_artifact reports them.
UFUNC_CASES = [
    (
        "ufunc_as_an_estimator_attribute",
        ufunc_as_an_estimator_attribute,
        "The model file is refused: it holds numpy.exp where only a FunctionTransformer's func or inverse_func may.",
        ["numpy.exp"],
    ),
    (
        "ufunc_called_while_loading",
        ufunc_called_while_loading,
        "The model file is refused: it calls numpy.sqrt while loading; it may only be a FunctionTransformer's func or "
        "inverse_func.",
        [],
    ),
    (
        "ufunc_off_the_list",
        ufunc_off_the_list,
        "The model file refers to globals outside the allow-list: numpy.sin",
        ["numpy.sin"],
    ),
]
