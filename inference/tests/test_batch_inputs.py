"""Cutting input files into chunks, and the two scoring paths agreeing cell for cell."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from inference.batch import inputs, scoring
from inference.validation import InputSpec
from platform_site.errors import InvalidInput


def split(
    data: bytes, *, is_csv: bool = True, rows: int = 2, max_bytes: int = 1 << 20, block_size: int = 7
) -> list[tuple[int, int, bytes]]:
    splitter = inputs.RecordSplitter(io.BytesIO(data), is_csv=is_csv, rows=rows, max_bytes=max_bytes, block_size=block_size)
    return [(chunk.first_row, chunk.rows, chunk.data) for chunk in splitter]


@pytest.mark.parametrize("block_size", [3, 7, 64, 1 << 20], ids=lambda b: f"block-{b}")
def test_records_come_out_whole_in_order_with_empty_lines_dropped(block_size):
    data = b"1,2\n\n3,4\r\n\r\n5,6\n  \n7,8"
    assert split(data, block_size=block_size) == [(0, 2, b"1,2\n3,4\r\n"), (2, 2, b"5,6\n  \n"), (4, 1, b"7,8\n")]


@pytest.mark.parametrize("block_size", [4, 9, 1 << 20], ids=lambda b: f"block-{b}")
def test_a_quoted_newline_keeps_its_record_whole(block_size):
    data = b'a,"line one\nline two"\nb,"say ""hi"""\nc,"x\n\ny"\n'
    assert split(data, rows=1, block_size=block_size) == [
        (0, 1, b'a,"line one\nline two"\n'),
        (1, 1, b'b,"say ""hi"""\n'),
        (2, 1, b'c,"x\n\ny"\n'),
    ]


def test_json_lines_ignore_quotes():
    data = b'{"a": "x"}\n{"a": "y\\"z"}\n\n{"a": "w"}\n'
    assert split(data, is_csv=False, rows=10) == [(0, 3, b'{"a": "x"}\n{"a": "y\\"z"}\n{"a": "w"}\n')]


def test_chunks_stop_at_the_byte_budget_but_always_take_one_record():
    data = b"".join(f"{i},{'x' * 10}\n".encode() for i in range(10))  # 13 or 14 bytes a line
    chunks = split(data, rows=100, max_bytes=30, block_size=1 << 20)
    assert [rows for _, rows, _ in chunks] == [2, 2, 2, 2, 2]
    assert b"".join(part for _, _, part in chunks) == data
    assert split(b"a-very-long-record\nb\n", rows=100, max_bytes=4)[0] == (0, 1, b"a-very-long-record\n")


def test_a_byte_order_mark_is_not_part_of_the_first_record():
    stream = io.BytesIO("\ufeffa,b\n1,2\n".encode())
    assert inputs.read_first_record(stream, is_csv=None) == b"a,b\n"
    assert split("\ufeff{}\n".encode(), is_csv=False) == [(0, 1, b"{}\n")]


def test_many_rows_split_on_row_count():
    data = b"".join(f"{i},{i}\n".encode() for i in range(25_000))
    chunks = split(data, rows=10_000, block_size=1 << 16)
    assert [(first, rows) for first, rows, _ in chunks] == [(0, 10_000), (10_000, 10_000), (20_000, 5_000)]
    assert b"".join(part for _, _, part in chunks) == data


SPEC = InputSpec.from_signature(
    {"inputs": [{"name": n, "type": "double"} for n in "abcd"], "named": True}, wants_frame=False, max_rows=10
)


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    return LogisticRegression().fit(x, (x[:, 0] + x[:, 2] > 0).astype(int) + (x[:, 1] > 1))


def layout(**kwargs) -> scoring.ChunkLayout:
    options = {"input_format": "csv", "columns": ["d", "b", "a", "c"], "spec": SPEC, "want_proba": False, "skip_bad_rows": False}
    options.update(kwargs)
    return scoring.ChunkLayout.build(classes=[0, 1, 2], chunk_rows=1000, **options)


@pytest.mark.parametrize("want_proba", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("skip_bad_rows", [False, True], ids=["fail", "skip"])
def test_fast_and_row_paths_write_the_same_bytes(model, want_proba, skip_bad_rows):
    rng = np.random.default_rng(1)
    rows = np.round(rng.normal(size=(500, 4)), 4)
    data = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows).encode()
    shape = layout(want_proba=want_proba, skip_bad_rows=skip_bad_rows)

    def predict(x):
        return model.predict(x), model.predict_proba(x) if want_proba else None

    fast = scoring.score_records(data, layout=shape, first_row=0, predict=predict)
    slow = scoring._score_csv_rows(data, layout=shape, first_row=0, predict=predict, sample_rows=0)
    assert fast.body == slow.body
    # File order d,b,a,c is put back in signature order a,b,c,d before predicting.
    expected = model.predict(rows[:, [2, 1, 3, 0]])
    assert [int(line.split(b",")[4]) for line in fast.body.splitlines()] == expected.tolist()


def test_a_bad_row_is_named_by_its_row_in_the_whole_file(model):
    data = b"1,2,3,4\n1,2,oops,4\n"
    with pytest.raises(InvalidInput) as caught:
        scoring.score_records(data, layout=layout(), first_row=48_212, predict=lambda x: (model.predict(x), None))
    assert caught.value.errors == [{"row": 48_213, "column": "a", "message": "expected a number, got the string 'oops'"}]
    assert caught.value.detail == "Row 48213, column 'a': expected a number, got the string 'oops'."


def test_a_model_that_raises_fails_without_retry():
    def broken(x):
        raise ValueError("X has 3 features, but the model expects 5")

    with pytest.raises(scoring.ModelFailed, match="The model raised ValueError: X has 3 features"):
        scoring.score_records(b"1,2,3,4\n", layout=layout(), first_row=0, predict=broken)


@pytest.mark.parametrize("want_proba", [False, True], ids=["labels", "probabilities"])
@pytest.mark.parametrize("data", [b"1,2,3,4\n5,6,7,8\n", b'1,2,3,4\n5,6,"7",8\n'], ids=["fast", "row-by-row"])
def test_a_model_answering_for_fewer_rows_than_it_was_given_fails_without_retry(model, data, want_proba):
    # Each answer is written beside its row: a short answer must not silently drop rows from the result.
    def short(x):
        return model.predict(x)[: 1 if not want_proba else None], model.predict_proba(x)[:1] if want_proba else None

    with pytest.raises(scoring.ModelFailed, match=r"The model's output has a length of (1|1 and 2); its input has 2 rows\."):
        scoring.score_records(data, layout=layout(want_proba=want_proba), first_row=0, predict=short)


@pytest.mark.parametrize("input_format", ["csv", "jsonl"])
def test_a_multi_output_models_prediction_is_the_list_of_its_outputs(input_format):
    """CSV keeps one prediction cell, holding the outputs as a JSON array; JSON lines keeps the list."""
    from sklearn.neighbors import KNeighborsClassifier

    x = np.random.default_rng(2).normal(size=(40, 4))
    model = KNeighborsClassifier(n_neighbors=3).fit(
        x, np.column_stack([np.where(x[:, 0] > 0, "yes", "no"), np.where(x[:, 1] > 0, "hi", "lo")])
    )
    rows = np.round(x[:6], 4)
    shape = layout(input_format=input_format, columns=["a", "b", "c", "d"])
    want = model.predict(rows).tolist()
    if input_format == "csv":
        data = "".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows).encode()
        fast = scoring.score_records(data, layout=shape, first_row=0, predict=lambda x: (model.predict(x), None))
        slow = scoring._score_csv_rows(data, layout=shape, first_row=0, predict=lambda x: (model.predict(x), None), sample_rows=0)
        assert fast.body == slow.body
        import csv

        assert [json.loads(record[4]) for record in csv.reader(io.StringIO(fast.body.decode()))] == want
        assert shape.header_line() == b"a,b,c,d,prediction\n"
    else:
        data = b"".join(json.dumps(row).encode() + b"\n" for row in rows.tolist())
        scored = scoring.score_records(data, layout=shape, first_row=0, predict=lambda x: (model.predict(x), None))
        assert [json.loads(line)[4] for line in scored.body.splitlines()] == want
