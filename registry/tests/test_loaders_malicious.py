"""Hostile pickles and joblib files: refused, named, and never run."""

from __future__ import annotations

import ast
import importlib.util
import io
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from platform_site.errors import InvalidArtifact, UnsafeArtifact
from registry.loaders.safe_pickle import (
    RestrictedJoblibUnpickler,
    RestrictedUnpickler,
    audit_pickle_globals,
    load_pickle,
)
from registry.loaders.structure import check_model_structures
from registry.tests import malicious

CASES = malicious.corpus()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


def _write(tmp_path: Path, data: bytes, *, is_joblib: bool) -> Path:
    path = tmp_path / ("model.joblib" if is_joblib else "model.pkl")
    path.write_bytes(data)
    return path


def _wait_for(path: Path) -> bool:
    # subprocess.Popen payloads touch the marker from a child process, shortly after loading.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("case", [case for case in CASES if case.is_live], ids=lambda case: case.id)
def test_payload_runs_when_loaded_without_our_loader(case: malicious.Case, marker: Path) -> None:
    """Control: proves each payload is real, so the refusal tests below can fail."""
    with case.context():
        data = case.build(marker)
        malicious.load_unsafely(data, is_joblib=case.is_joblib)
    assert _wait_for(marker)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_load_refuses_and_names_every_refused_global(case: malicious.Case, marker: Path, tmp_path: Path) -> None:
    with case.context():
        path = _write(tmp_path, case.build(marker), is_joblib=case.is_joblib)
        with pytest.raises(UnsafeArtifact) as raised:
            load_pickle(source=path)
    assert raised.value.refused_globals == sorted(case.refused)
    assert raised.value.detail == "The model file refers to globals outside the allow-list: " + ", ".join(sorted(case.refused))
    assert raised.value.status == 422
    assert not marker.exists()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_audit_alone_refuses_from_bytes(case: malicious.Case, marker: Path) -> None:
    with case.context():
        data = case.build(marker)
        with pytest.raises(UnsafeArtifact) as raised:
            audit_pickle_globals(source=data)
    assert raised.value.refused_globals == sorted(case.refused)
    assert not marker.exists()


@pytest.mark.parametrize("case", [case for case in CASES if case.is_live and not case.is_joblib], ids=lambda case: case.id)
def test_enforcing_unpickler_refuses_without_the_audit(case: malicious.Case, marker: Path) -> None:
    """The second line of defence: find_class alone stops the first refused global it meets."""
    with case.context():
        data = case.build(marker)
        with pytest.raises(UnsafeArtifact) as raised:
            RestrictedUnpickler(io.BytesIO(data)).load()
    assert len(raised.value.refused_globals) == 1
    assert raised.value.refused_globals[0] in case.refused
    assert not marker.exists()


@pytest.mark.parametrize("case", [case for case in CASES if case.is_joblib], ids=lambda case: case.id)
def test_enforcing_joblib_unpickler_refuses_nested_object_array_payloads(case: malicious.Case, marker: Path) -> None:
    from registry.loaders.safe_pickle import open_pickle_stream

    data = case.build(marker)
    with open_pickle_stream(source=data) as (stream, _), pytest.raises(UnsafeArtifact) as raised:
        RestrictedJoblibUnpickler("", stream, True).load()
    assert raised.value.refused_globals == sorted(case.refused)
    assert not marker.exists()


def test_stack_global_with_a_computed_name_is_refused(marker: Path) -> None:
    with pytest.raises(UnsafeArtifact) as raised:
        audit_pickle_globals(source=malicious.stack_global_computed_name(marker))
    assert raised.value.refused_globals == []
    assert raised.value.detail == "The model file is refused: it builds a STACK_GLOBAL name at load time."


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    class PersistentPickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:
            return "tenant-object" if obj == "persisted" else None

    buffer = io.BytesIO()
    PersistentPickler(buffer, protocol=2).dump(["persisted", "plain"])
    with pytest.raises(UnsafeArtifact) as raised:
        load_pickle(source=buffer.getvalue())
    assert raised.value.detail == "The model file is refused: it uses pickle persistent ids, which the platform refuses."
    with pytest.raises(UnsafeArtifact, match="persistent ids"):
        RestrictedUnpickler(io.BytesIO(buffer.getvalue())).load()


def test_refusal_and_persistent_id_are_reported_together(marker: Path) -> None:
    class PersistentPickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> str | None:
            return "tenant-object" if obj == "persisted" else None

    buffer = io.BytesIO()
    PersistentPickler(buffer, protocol=4).dump(["persisted", malicious.eval_payload(marker)])
    with pytest.raises(UnsafeArtifact) as raised:
        audit_pickle_globals(source=buffer.getvalue())
    assert raised.value.refused_globals == ["builtins.eval"]
    assert raised.value.detail == (
        "The model file is refused: it refers to globals outside the allow-list: builtins.eval; "
        "it uses pickle persistent ids, which the platform refuses."
    )


def test_unregistered_extension_code_is_invalid(marker: Path) -> None:
    with malicious.registered_extension("posix", "system", 0xF1):
        data = pickle.dumps(malicious.os_system(marker), protocol=2)
    with pytest.raises(InvalidArtifact, match="copyreg extension code 241, which is not registered"):
        load_pickle(source=data)
    assert not marker.exists()


def test_latin1_stand_in_refuses_other_codecs() -> None:
    # Protocols 0-2 write bytes as _codecs.encode(text, "latin1"); any other codec is refused at load.
    data = pickle.PROTO + b"\x02" + pickle.GLOBAL + b"_codecs\nencode\n" + b"X\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    assert audit_pickle_globals(source=data).globals == ("_codecs.encode",)
    with pytest.raises(UnsafeArtifact) as raised:
        load_pickle(source=data)
    assert raised.value.refused_globals == ["_codecs.encode"]
    assert raised.value.detail == "The model file calls _codecs.encode with encoding 'rot13'; only latin1 is allowed."


def test_old_multi_file_joblib_pickle_is_invalid() -> None:
    from joblib.numpy_pickle_compat import NDArrayWrapper

    data = pickle.dumps(NDArrayWrapper("model.pkl_01.npy", np.ndarray), protocol=2)
    with pytest.raises(InvalidArtifact, match="joblib older than 0.10, which kept arrays in companion .npy files"):
        load_pickle(source=data)


def test_joblib_wrapper_built_by_a_call_is_invalid() -> None:
    # joblib writes its wrapper with NEWOBJ + state; a REDUCE call could pick any attributes.
    data = (
        pickle.PROTO
        + b"\x02"
        + pickle.GLOBAL
        + b"joblib.numpy_pickle\nNumpyArrayWrapper\n"
        + pickle.GLOBAL
        + b"numpy\nndarray\n"
        + pickle.EMPTY_TUPLE
        + pickle.TUPLE2
        + pickle.REDUCE
        + pickle.EMPTY_DICT
        + pickle.BUILD
        + pickle.STOP
    )
    with pytest.raises(InvalidArtifact, match="a joblib array wrapper built by calling it"):
        audit_pickle_globals(source=data)
    with pytest.raises(InvalidArtifact, match="builds a joblib array wrapper by calling it"):
        RestrictedJoblibUnpickler("", io.BytesIO(data), True).load()


def _joblib_array_inside_a_frame() -> bytes:
    """A joblib file whose first frame is stretched over the raw array bytes that follow it.

    The pickle unpickler would buffer the whole frame, so array bytes would be read as
    opcodes and vice versa: a parser differential, refused by the audit and the loader.
    """
    data = bytearray(malicious.joblib_bytes(np.arange(4, dtype=np.int64)))
    assert data[2:3] == pickle.FRAME
    frame_length = int.from_bytes(data[3:11], "little")
    data[3:11] = (frame_length + 16 + 32).to_bytes(8, "little")
    return bytes(data)


def test_joblib_array_data_inside_a_pickle_frame_is_invalid() -> None:
    data = _joblib_array_inside_a_frame()
    with pytest.raises(InvalidArtifact, match="joblib array data inside a pickle frame"):
        audit_pickle_globals(source=data)


def test_joblib_loader_alone_refuses_array_data_inside_a_frame() -> None:
    with pytest.raises(InvalidArtifact, match="joblib array data inside a frame"):
        RestrictedJoblibUnpickler("", io.BytesIO(_joblib_array_inside_a_frame()), True).load()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "The model file is empty.", id="empty"),
        pytest.param(b"not a pickle at all", "unknown opcode b'n' at byte 0", id="text"),
        pytest.param(pickle.dumps([1, 2, 3])[:-1], "it ends before its STOP opcode", id="truncated"),
        pytest.param(b"\x80\x05h\x07.", "it reads memo entry 7 before writing it", id="memo_get_before_put"),
        pytest.param(b"\x80\x02(K\x01d.", "a dict with a key but no value", id="odd_dict"),
        pytest.param(b"\x80\x02}(K\x01u.", "a dict with a key but no value", id="odd_setitems"),
        pytest.param(
            malicious.joblib_bytes(np.arange(1000, dtype=np.float64))[:-100],
            "the file ends inside array data",
            id="truncated_joblib_array",
        ),
    ],
)
def test_unreadable_files_are_invalid_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArtifact) as raised:
        load_pickle(source=data)
    assert message in raised.value.detail


def test_corrupt_compressed_joblib_is_invalid() -> None:
    data = bytearray(malicious.joblib_bytes({"weights": np.arange(5000.0)}, compress=3))
    data[40:60] = b"\x00" * 20
    with pytest.raises(InvalidArtifact, match="zlib-compressed file is corrupt"):
        load_pickle(source=bytes(data))


def test_lz4_joblib_is_invalid_without_lz4_installed() -> None:
    if importlib.util.find_spec("lz4") is not None:
        pytest.skip("lz4 is installed here")
    with pytest.raises(InvalidArtifact, match="The lz4-compressed file cannot be read here"):
        load_pickle(source=b"\x04\x22\x4d\x18" + b"\x00" * 32)


@pytest.mark.parametrize(
    ("module", "name"),
    [
        pytest.param("sklearn.no_such_module", "LogisticRegression", id="missing_module"),
        pytest.param("sklearn.linear_model", "LogisticRegression.__init__", id="dotted_qualname"),
        pytest.param("sklearn.linear_model", "__builtins__", id="dunder"),
        pytest.param("sklearn.linear_model.tests.test_logistic", "LogisticRegression", id="test_module"),
        pytest.param("sklearn.base", "clone", id="function_not_class"),
        pytest.param("sklearn.externals._packaging.version", "Version", id="vendored"),
    ],
)
def test_sklearn_names_that_are_not_estimator_classes_are_refused(module: str, name: str) -> None:
    data = pickle.PROTO + b"\x04" + malicious._unicode(module) + malicious._unicode(name) + pickle.STACK_GLOBAL + pickle.STOP
    with pytest.raises(UnsafeArtifact) as raised:
        audit_pickle_globals(source=data)
    assert raised.value.refused_globals == [f"{module}.{name}"]


# --- hostile state: files that name only allowed globals ----------------------------------------

STATE_CASES = malicious.state_corpus()
_REPO_ROOT = Path(__file__).resolve().parents[2]
_PLAIN_LOAD = """
import io, pickle, sys
import joblib
data = open(sys.argv[1], "rb").read()
obj = joblib.load(io.BytesIO(data)) if sys.argv[2] == "joblib" else pickle.loads(data)
"""


def _load_plainly_in_a_child(tmp_path: Path, case: malicious.StateCase, then: str, *args: str) -> subprocess.CompletedProcess:
    """Load with plain pickle/joblib in a separate interpreter (the harm must not reach this one)."""
    path = tmp_path / "hostile"
    path.write_bytes(case.build())
    return subprocess.run(
        [sys.executable, "-c", _PLAIN_LOAD + then, str(path), "joblib" if case.is_joblib else "pickle", *args],
        cwd=_REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _leaked_bytes(classes: Any) -> bytes:
    if isinstance(classes, np.ndarray) and classes.dtype == np.uint64:
        return classes.tobytes()
    first = classes[0]
    if isinstance(first, str):  # numpy.str_(bytes) is the bytes' repr
        return ast.literal_eval(str(first))
    return bytes(first)


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda case: case.id)
def test_hostile_state_does_its_harm_under_plain_pickle(case: malicious.StateCase, tmp_path: Path) -> None:
    """Control: each file of allowed globals really corrupts memory, leaks addresses or changes a shared class."""
    if case.harm == "segfault":
        then = "import pandas as pd\nprint(obj.predict(pd.DataFrame({'a': [1.0], 'b': [0.0]})).tolist())"
        result = _load_plainly_in_a_child(tmp_path, case, then)
        # A sane model answers [1.0]; this one dereferences WILD_POINTER.
        assert result.returncode == -signal.SIGSEGV or (result.returncode == 0 and result.stdout.strip() != "[1.0]")
    elif case.harm == "tamper":
        then = (
            "import importlib, numpy\nmodule, _, name = sys.argv[3].rpartition('.')\n"
            "print(getattr(importlib.import_module(module), name).inverse is numpy.int8)"
        )
        result = _load_plainly_in_a_child(tmp_path, case, then, case.refusal)
        assert (result.returncode, result.stdout.strip()) == (0, "True")
    elif case.harm == "leak":
        # Safe here: these payloads only read memory.
        model = malicious.load_unsafely(case.build(), is_joblib=case.is_joblib)
        assert id(None).to_bytes(8, "little")[:6] in _leaked_bytes(model.classes_)
    else:
        model = malicious.load_unsafely(case.build(), is_joblib=case.is_joblib)
        assert type(model.predict([[3.0]])[0]) is slice


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda case: case.id)
def test_loader_refuses_hostile_state_naming_what_is_wrong(case: malicious.StateCase) -> None:
    from sklearn._loss import link

    links_before = (link.IdentityLink.inverse, link.LogitLink.inverse)
    with pytest.raises(UnsafeArtifact) as raised:
        loaded = load_pickle(source=case.build())
        check_model_structures(model=loaded.obj)
    assert case.refusal in raised.value.detail
    assert raised.value.status == 422
    assert (link.IdentityLink.inverse, link.LogitLink.inverse) == links_before


@pytest.mark.parametrize(
    ("case_id", "detail"),
    [
        (
            "dtype_object_flags_cleared",
            "The model file is refused: it builds a numpy dtype object whose flags is 0 where numpy's own '|O' dtype has 63.",
        ),
        (
            "bytes_of_object_array_in_str",
            "The model file is refused: it calls builtins.bytes on a value built at load time (on an object array "
            "that returns its pointers); builtins.bytes may only convert literals; it calls numpy.str_ on a value "
            "built at load time (on an object array that returns its pointers); numpy.str_ may only convert literals.",
        ),
        (
            "class_build_identity_link",
            "The model file is refused: it applies BUILD state to sklearn._loss.link.IdentityLink itself "
            "(setattr on it for the whole process).",
        ),
    ],
)
def test_the_three_reproductions_are_refused_with_their_reason(case_id: str, detail: str) -> None:
    case = next(case for case in STATE_CASES if case.id == case_id)
    with pytest.raises(UnsafeArtifact) as raised:
        audit_pickle_globals(source=case.build())
    assert raised.value.detail == detail


@pytest.mark.parametrize("case", [case for case in STATE_CASES if case.harm != "tamper"], ids=lambda case: case.id)
def test_enforcing_unpickler_and_structure_check_refuse_hostile_state_without_the_audit(
    case: malicious.StateCase,
) -> None:
    """The second line: stand-ins, the joblib BUILD guard and the post-load walk, with no walk first."""
    from registry.loaders.safe_pickle import open_pickle_stream

    data = case.build()
    with pytest.raises(UnsafeArtifact):
        if case.is_joblib:
            with open_pickle_stream(source=data) as (stream, _):
                obj = RestrictedJoblibUnpickler("", stream, True).load()
        else:
            obj = RestrictedUnpickler(io.BytesIO(data)).load()
        check_model_structures(model=obj)


_UNAUDITED_CLASS_BUILD = """
import io, sys, numpy
from sklearn._loss import link
from registry.loaders.safe_pickle import RestrictedUnpickler, _SharedGlobals
from registry.tests import malicious
from platform_site.errors import UnsafeArtifact
data = getattr(malicious, sys.argv[1])()
shared = _SharedGlobals(("sklearn._loss.link.IdentityLink", "sklearn._loss.link.LogitLink"))
RestrictedUnpickler(io.BytesIO(data)).load()
tampered = link.IdentityLink.inverse is numpy.int8 or link.LogitLink.inverse is numpy.int8
try:
    shared.restore_or_raise()
except UnsafeArtifact as exc:
    print(tampered, exc.detail, link.IdentityLink.inverse is numpy.int8 or link.LogitLink.inverse is numpy.int8)
"""


@pytest.mark.parametrize(
    ("builder", "attribute"),
    [
        ("class_build_on_identity_link", "sklearn._loss.link.IdentityLink.inverse"),
        ("class_build_on_logit_link_through_memo", "sklearn._loss.link.LogitLink.inverse"),
    ],
)
def test_a_class_changed_by_a_load_the_walk_missed_is_restored_and_refused(builder: str, attribute: str) -> None:
    # In a child: the C unpickler alone really changes the class (nothing per opcode can stop it).
    result = subprocess.run(
        [sys.executable, "-c", _UNAUDITED_CLASS_BUILD, builder], cwd=_REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == (
        f"True The model file is refused: loading it changed {attribute}, which every model in the process shares. False"
    ), result.stderr


def test_joblib_unpickler_refuses_build_on_a_class() -> None:
    prefix = malicious._class_build("sklearn._loss.link", "IdentityLink", "inverse", "numpy", "int8")
    body = pickle.dumps([1], protocol=2)
    hostile = pickle.PROTO + b"\x02" + prefix + body[2:-1] + pickle.TUPLE2 + pickle.STOP
    from sklearn._loss import link

    before = link.IdentityLink.inverse
    with pytest.raises(UnsafeArtifact, match="applies BUILD state to IdentityLink, which is not an object it just constructed"):
        RestrictedJoblibUnpickler("", io.BytesIO(hostile), True).load()
    assert link.IdentityLink.inverse is before


def test_dtype_build_on_numpys_shared_dtype_is_refused() -> None:
    # numpy.dtype(..., copy=False) returns numpy's own shared dtype; BUILD would change it for everyone.
    data = pickle.dumps(malicious.ReduceWithState(np.dtype, ("f8", False, False), (3, "<", None, None, None, -1, -1, 0)))
    with pytest.raises(UnsafeArtifact) as raised:
        audit_pickle_globals(source=data)
    assert raised.value.detail == "The model file is refused: it applies BUILD state to a numpy dtype that is not a fresh copy."


def test_build_twice_on_one_object_is_refused() -> None:
    dtype = malicious.ReduceWithState(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 0))
    data = pickle.dumps(dtype, protocol=2)
    assert data.endswith(b"b.")
    twice = data[:-1] + pickle.EMPTY_DICT + pickle.BUILD + pickle.STOP
    with pytest.raises(UnsafeArtifact, match="it applies BUILD state twice to one numpy.dtype"):
        audit_pickle_globals(source=twice)


PARTIAL_CASES = malicious.partial_corpus()


def test_a_partial_called_while_loading_runs_its_payload_under_plain_pickle(marker: Path) -> None:
    """Control: the os.system partial is live, so its refusal below can fail."""
    case = next(case for case in PARTIAL_CASES if case.id == "partial_of_os_system_called_while_loading")
    malicious.load_unsafely(case.build(marker), is_joblib=False)
    assert _wait_for(marker)


@pytest.mark.parametrize("case", PARTIAL_CASES, ids=lambda case: case.id)
def test_a_partial_other_than_hist_gradient_boostings_is_refused_naming_it(case: malicious.PartialCase, marker: Path) -> None:
    with pytest.raises(UnsafeArtifact) as raised:
        load_pickle(source=case.build(marker))
    assert raised.value.detail == f"The model file is refused: {case.reason}."
    assert raised.value.refused_globals == list(case.refused)
    assert not marker.exists()


@pytest.mark.parametrize("case", [case for case in PARTIAL_CASES if not case.refused], ids=lambda case: case.id)
def test_the_partial_and_check_array_stand_ins_refuse_without_the_audit(case: malicious.PartialCase, marker: Path) -> None:
    with pytest.raises(UnsafeArtifact) as raised:
        RestrictedUnpickler(io.BytesIO(case.build(marker))).load()
    assert raised.value.refused_globals in (["functools.partial"], ["sklearn.utils.validation.check_array"])
    assert "The model file is refused: it " in raised.value.detail


@pytest.mark.parametrize(
    ("build", "detail", "refused"), [case[1:] for case in malicious.UFUNC_CASES], ids=[case[0] for case in malicious.UFUNC_CASES]
)
def test_a_numpy_ufunc_anywhere_but_a_transformers_func_is_refused_naming_it(build: Any, detail: str, refused: list[str]) -> None:
    from registry.loaders.serving import load_serving_artifact

    with pytest.raises(UnsafeArtifact) as raised:
        load_serving_artifact(data=build())
    assert (raised.value.detail, raised.value.refused_globals) == (detail, refused)


@pytest.mark.parametrize(
    "build", [malicious.ufunc_as_an_estimator_attribute, malicious.ufunc_called_while_loading], ids=["attribute", "called"]
)
def test_the_ufunc_stand_in_refuses_without_the_audit(build: Any) -> None:
    with pytest.raises(UnsafeArtifact) as raised:
        check_model_structures(model=RestrictedUnpickler(io.BytesIO(build())).load())
    assert raised.value.refused_globals in (["numpy.exp"], ["numpy.sqrt"])
