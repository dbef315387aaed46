"""The allow-list: the globals a tenant's model file may name.

A pickle runs code only by naming a global (GLOBAL, STACK_GLOBAL, INST, EXT1/2/4) and
calling it (REDUCE, NEWOBJ, OBJ, INST) or handing it state (BUILD -> ``__setstate__``).
The arguments of those calls are themselves literals or objects built from other allowed
globals. So a file is as safe as the globals it may name, provided every allowed global
is harmless whatever arguments it is called with. The policy:

1. scikit-learn estimators: a class that subclasses ``sklearn.base.BaseEstimator`` and is
   defined in scikit-learn, found by importing the named module (only modules under
   ``sklearn.``, never its tests, vendored ``externals`` or ``experimental`` switches) and
   checking the attribute. Estimator constructors store parameters; ``__setstate__``
   only fills ``__dict__``.
2. An explicit list of reconstruction helpers that real fitted models need, found by
   pickling every common estimator with protocols 0-5, joblib and cloudpickle (see
   ``registry/tests/test_loaders_roundtrip.py``): scikit-learn's Cython trees, losses,
   links, distance metrics, neighbour trees, optimizers, CV splitters; numpy's array,
   scalar, dtype and masked-array reconstructors, scalar types and random generators;
   scipy.sparse containers; inert builtins and stdlib containers.
3. Globals allowed only through a stand-in the unpickler substitutes, never the real
   object: ``_codecs.encode`` (how protocols 0-2 write ``bytes``; the stand-in accepts
   only latin-1), joblib's ``NumpyArrayWrapper`` (a placeholder our joblib reader
   consumes; joblib's own class would let the file choose the array subclass) and
   ``functools.partial`` (below).
4. ``functools.partial`` of exactly one function with exactly the keywords scikit-learn
   writes (``partial_problem``): ``HistGradientBoosting*`` fitted with categorical
   features validates its numeric columns with
   ``FunctionTransformer(partial(check_array, dtype=[X_DTYPE], ensure_all_finite=False))``
   (sklearn/ensemble/_hist_gradient_boosting/gradient_boosting.py, ``_preprocess_X``).
   The opcode walk refuses any other partial before loading, and so does the stand-in the
   unpickler hands out (a ``functools.partial`` subclass that checks its function and
   keywords when built and when given state, and pickles back as a plain partial).
   ``check_array`` itself may appear only as that partial's function: the unpickler hands
   out a stand-in that refuses to be called, which the partial swaps for the real one.

5. Six numpy ufuncs (``log1p``, ``expm1``, ``log``, ``exp``, ``sqrt``, ``absolute``, which
   ``np.abs`` is), only as the ``func``/``inverse_func`` of a ``FunctionTransformer`` or a
   ``TransformedTargetRegressor``: the unpickler hands out an inert ``UfuncReference``
   (calling or pickling it is refused), the walk refuses calling one while loading, and
   the post-load walk (``structure.check_model_structures``) puts the real ufunc in those
   two attributes and refuses the file if a reference is left anywhere else. A ufunc called
   on an array only computes (numpy checks its arguments), so this adds no reach; keeping
   it to those attributes keeps the argument short.

Deliberately refused although they look harmless:
- a ``functools.partial`` of anything else: its ``func`` is itself a global that passes
  through this list, so it adds no reach, but no estimator we tested needs it and every
  allowed callable is one more thing to argue about; ``FunctionTransformer(func=...)``
  with any other library function is refused for the same reason.
- ``builtins.getattr``/``eval``/``exec``/``compile``/``__import__``/``open``/``type``,
  ``operator.attrgetter``/``methodcaller``, ``types.*``, ``importlib``, ``os``/``posix``/
  ``nt``, ``subprocess``, ``sys``, ``shutil``, ``socket``, ``runpy``, ``code``, ``pickle``,
  ``marshal``, ``ctypes``, ``cloudpickle.*`` (it rebuilds code objects), ``dill.*``,
  pandas objects: none is on the list, so all are refused by construction.

Denial of service (a file asking for a 100 GB array) is not this module's concern: the
upload-time check runs in a child process with memory and CPU limits (``sandbox.py``).
"""

from __future__ import annotations

import _compat_pickle
import functools
import importlib
from typing import Any

# (module, name) pairs, grouped by why they are needed.
_BUILTINS = {
    # Containers and values that protocols 0-3 rebuild by calling the type.
    ("builtins", name)
    for name in ("object", "slice", "set", "frozenset", "complex", "bytes", "bytearray", "list", "dict")
}
_STDLIB = {
    # Protocols 0-1 rebuild plain objects with copyreg._reconstructor(cls, object, None).
    ("copyreg", "_reconstructor"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
}
_NUMPY_SCALAR_TYPES = {
    ("numpy", name)
    for name in (
        "bool",
        "bool_",
        "int8",
        "int16",
        "int32",
        "int64",
        "longlong",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "ulonglong",
        "intp",
        "uintp",
        "float16",
        "float32",
        "float64",
        "longdouble",
        "complex64",
        "complex128",
        "clongdouble",
        "str_",
        "bytes_",
        "void",
        "object_",
        "datetime64",
        "timedelta64",
    )
}
_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "matrix"),
    ("numpy", "dtype"),
    # numpy 2 writes numpy._core.*, numpy 1.x wrote numpy.core.*; numpy 2 still reads both.
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    # GridSearchCV.cv_results_ holds masked arrays.
    ("numpy.ma", "MaskedArray"),
    ("numpy.ma.core", "MaskedArray"),
    ("numpy.ma.core", "_mareconstruct"),
    # random_state attributes: the constructors only accept BitGenerator names/types.
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random.mtrand", "RandomState"),
    ("numpy.random._generator", "Generator"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._pcg64", "PCG64DXSM"),
    ("numpy.random._philox", "Philox"),
    ("numpy.random._sfc64", "SFC64"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
}
_SCIPY_SPARSE = {
    (f"scipy.sparse._{fmt}", f"{fmt}_{kind}")
    for fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
    for kind in ("matrix", "array")
}
_SKLEARN_INTERNALS = {
    ("sklearn.tree._tree", "Tree"),
    ("sklearn.ensemble._hist_gradient_boosting.predictor", "TreePredictor"),
    ("sklearn.neural_network._stochastic_optimizers", "SGDOptimizer"),
    ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),
    ("sklearn.utils._bunch", "Bunch"),
    ("sklearn.compose._column_transformer", "make_column_selector"),
    ("sklearn.metrics._scorer", "_PassthroughScorer"),
    # CalibratedClassifierCV (what sklearn 1.9 recommends over SVC(probability=True)).
    ("sklearn.calibration", "_CalibratedClassifier"),
    *(
        ("sklearn.model_selection._split", name)
        for name in (
            "KFold",
            "StratifiedKFold",
            "GroupKFold",
            "StratifiedGroupKFold",
            "ShuffleSplit",
            "StratifiedShuffleSplit",
            "GroupShuffleSplit",
            "TimeSeriesSplit",
            "RepeatedKFold",
            "RepeatedStratifiedKFold",
            "LeaveOneOut",
            "LeavePOut",
            "PredefinedSplit",
            "_CVIterableWrapper",
        )
    ),
    *(
        ("sklearn._loss.loss", name)
        for name in (
            "HalfSquaredError",
            "AbsoluteError",
            "PinballLoss",
            "HuberLoss",
            "HalfPoissonLoss",
            "HalfGammaLoss",
            "HalfTweedieLoss",
            "HalfTweedieLossIdentity",
            "HalfBinomialLoss",
            "HalfMultinomialLoss",
            "ExponentialLoss",
        )
    ),
    *(
        ("sklearn._loss.link", name)
        for name in ("Interval", "IdentityLink", "LogLink", "LogitLink", "HalfLogitLink", "MultinomialLogit")
    ),
    *(
        ("sklearn._loss._loss", name)
        for name in (
            "CyHalfSquaredError",
            "CyAbsoluteError",
            "CyPinballLoss",
            "CyHuberLoss",
            "CyHalfPoissonLoss",
            "CyHalfGammaLoss",
            "CyHalfTweedieLoss",
            "CyHalfTweedieLossIdentity",
            "CyHalfBinomialLoss",
            "CyExponentialLoss",
            "CyHalfMultinomialLoss",
            "__pyx_unpickle_CyHalfMultinomialLoss",
        )
    ),
    *(
        ("sklearn.linear_model._sgd_fast", name)
        for name in (
            "Hinge",
            "SquaredHinge",
            "ModifiedHuber",
            "EpsilonInsensitive",
            "SquaredEpsilonInsensitive",
            "__pyx_unpickle_Regression",
            "__pyx_unpickle_Classification",
        )
    ),
    # KDTree/BallTree pickle through newObj(cls) == cls.__new__(cls), cls itself allow-listed.
    *(("sklearn.neighbors._kd_tree", name) for name in ("KDTree", "KDTree64", "KDTree32", "newObj")),
    *(("sklearn.neighbors._ball_tree", name) for name in ("BallTree", "BallTree64", "BallTree32", "newObj")),
    *(
        ("sklearn.metrics._dist_metrics", f"{metric}{bits}")
        for metric in (
            "Euclidean",
            "SEuclidean",
            "Manhattan",
            "Chebyshev",
            "Minkowski",
            "Mahalanobis",
            "Hamming",
            "Canberra",
            "BrayCurtis",
            "Jaccard",
            "Matching",
            "Dice",
            "Kulsinski",
            "RogersTanimoto",
            "RussellRao",
            "SokalMichener",
            "SokalSneath",
            "Haversine",
        )
        for bits in ("Distance64", "Distance32")
    ),
    ("sklearn.metrics._dist_metrics", "newObj"),
}

FUNCTOOLS_PARTIAL = ("functools", "partial")
# The one function a partial may wrap, and exactly the keywords scikit-learn 1.6+ gives it (see
# the module docstring); values as ``partial_problem`` compares them.
PARTIAL_FUNCTION = "sklearn.utils.validation.check_array"
PARTIAL_KEYWORDS: dict[str, Any] = {"dtype": ("numpy.float64",), "ensure_all_finite": False}
CHECK_ARRAY = ("sklearn.utils.validation", "check_array")

# numpy ufuncs a FunctionTransformer/TransformedTargetRegressor may hold as func/inverse_func.
TRANSFORMER_UFUNCS: frozenset[tuple[str, str]] = frozenset(
    ("numpy", name) for name in ("log1p", "expm1", "log", "exp", "sqrt", "absolute")
)
UFUNC_HOLDERS: dict[str, tuple[str, ...]] = {
    "sklearn.preprocessing._function_transformer.FunctionTransformer": ("func", "inverse_func"),
    "sklearn.compose._target.TransformedTargetRegressor": ("func", "inverse_func"),
}

# Allowed only because the unpickler hands out a restricted stand-in (see module docstring).
SUBSTITUTED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("_codecs", "encode"), ("joblib.numpy_pickle", "NumpyArrayWrapper"), FUNCTOOLS_PARTIAL, CHECK_ARRAY} | TRANSFORMER_UFUNCS
)
JOBLIB_ARRAY_WRAPPER = ("joblib.numpy_pickle", "NumpyArrayWrapper")
# joblib < 0.10 wrote arrays to companion .npy files next to the pickle.
OLD_JOBLIB_WRAPPERS: frozenset[str] = frozenset(
    f"{module}.{name}"
    for module in ("joblib.numpy_pickle_compat", "joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")
    for name in ("NDArrayWrapper", "ZNDArrayWrapper")
)

EXPLICIT_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    _BUILTINS | _STDLIB | _NUMPY_SCALAR_TYPES | _NUMPY | _SCIPY_SPARSE | _SKLEARN_INTERNALS | SUBSTITUTED_GLOBALS
)

# Module path components under sklearn. that are never imported on a file's say-so.
_SKLEARN_EXCLUDED_COMPONENTS = frozenset({"tests", "conftest", "externals", "experimental"})


def partial_problem(*, func: str, args: tuple[Any, ...], keywords: dict[str, Any]) -> str | None:
    """Why a ``functools.partial`` may not be built, or None for the one scikit-learn writes.

    ``func`` is the dotted name of the wrapped function; keyword values are compared as
    plain values, with classes as dotted names and lists as tuples. Booleans must be
    booleans (``0`` is not ``False``).
    """
    allowed = f"only {PARTIAL_FUNCTION} with dtype=[numpy.float64], ensure_all_finite=False"
    if func != PARTIAL_FUNCTION:
        return f"it builds a functools.partial of {func}; {allowed} (what HistGradientBoosting writes) is allowed"
    if args:
        return f"it builds a functools.partial of {func} with positional arguments; {allowed} is allowed"
    for name, value in keywords.items():
        if name not in PARTIAL_KEYWORDS:
            return f"it builds a functools.partial of {func} with keyword {name!r}; {allowed} is allowed"
        expected = PARTIAL_KEYWORDS[name]
        if type(value) is not type(expected) or value != expected:
            return f"it builds a functools.partial of {func} with {name}={value!r}; {allowed} is allowed"
    return None


def canonical_global(module: str, name: str) -> tuple[str, str]:
    """Return (module, name) with Python 2 names mapped to Python 3, as the unpickler maps them.

    Applied whatever the protocol, in the scan and the unpickler alike, so both judge the
    same name (``__builtin__.eval`` is judged, and reported, as ``builtins.eval``).
    """
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def is_allowed_global(module: str, name: str) -> bool:
    """Return whether ``module.name`` (already canonical) may appear in a tenant's pickle."""
    if (module, name) in EXPLICIT_GLOBALS:
        return True
    return _is_sklearn_estimator_class(module, name)


def is_allowed_type_name(dotted_name: str) -> bool:
    """Return whether a skops type name (``module.qualname``) passes the same policy.

    Substituted globals are refused here: skops would hand out the real object.
    """
    module, _, name = dotted_name.rpartition(".")
    if not module:
        return False
    module, name = canonical_global(module, name)
    return (module, name) not in SUBSTITUTED_GLOBALS and is_allowed_global(module, name)


def resolve_allowed_global(module: str, name: str) -> Any:
    """Return the object an allowed, non-substituted global names; the caller checked the policy."""
    if (module, name) in SUBSTITUTED_GLOBALS or not is_allowed_global(module, name):
        raise LookupError(f"{module}.{name} is not resolvable through the allow-list")
    return getattr(importlib.import_module(module), name)


@functools.lru_cache(maxsize=4096)
def _is_sklearn_estimator_class(module: str, name: str) -> bool:
    # The cache is bounded because the names come from tenants' files.
    parts = module.split(".")
    if parts[0] != "sklearn" or len(parts) < 2:
        return False
    if not all(part.isidentifier() for part in parts) or _SKLEARN_EXCLUDED_COMPONENTS.intersection(parts):
        return False
    if not name.isidentifier():
        return False  # also refuses dotted qualnames such as "Pipeline.__init__"
    try:
        target = getattr(importlib.import_module(module), name, None)
    except ModuleNotFoundError:
        # No such module here, or it needs an optional dependency we lack: nothing to allow.
        # Other ImportErrors (e.g. out of address space in the sandbox) propagate.
        return False
    from sklearn.base import BaseEstimator

    return (
        isinstance(target, type)
        and issubclass(target, BaseEstimator)
        and target.__module__.split(".")[0] == "sklearn"
        and target.__qualname__ == name
    )
