"""The cell checks of a request's rows, on requests small and large (the large ones take the
vectorized path): the same verdicts, and a refusal names the first bad cell's row and column."""

from __future__ import annotations

import math

import pytest

from inference.validation import InputSpec, check_rows
from platform_site.errors import InvalidInput

WIDTH = 20


def spec(kind: str = "double", *, allow_missing: bool = False) -> InputSpec:
    inputs = [{"name": f"f{i}", "type": kind, "allow_missing": allow_missing} for i in range(WIDTH)]
    return InputSpec.from_signature({"inputs": inputs}, wants_frame=False, max_rows=1000)


def rows(n: int) -> list[list]:
    return [[float(r * WIDTH + c) / 7 if c % 3 else r * WIDTH + c for c in range(WIDTH)] for r in range(n)]


@pytest.mark.parametrize("n", [1, 3, 100], ids=["1-row", "3-rows", "100-rows"])
def test_ints_and_finite_floats_pass(n):
    check_rows(rows(n), spec())


@pytest.mark.parametrize("n", [1, 3, 100], ids=["1-row", "3-rows", "100-rows"])
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(True, "expected a number, got the boolean true", id="boolean"),
        pytest.param(None, "missing value; expected a number", id="null"),
        pytest.param("5.1", "expected a number, got the string '5.1'", id="string"),
        pytest.param(math.inf, "expected a finite number, got inf", id="infinity"),
        pytest.param(math.nan, "expected a finite number, got nan", id="nan"),
        pytest.param([1.0], "expected a number, got a nested list", id="nested"),
    ],
)
def test_the_first_bad_cell_is_named_whatever_the_size(n, bad, message):
    batch = rows(n)
    batch[n - 1][WIDTH - 2] = bad
    with pytest.raises(InvalidInput) as raised:
        check_rows(batch, spec())
    assert raised.value.errors == [{"row": n - 1, "column": f"f{WIDTH - 2}", "message": message}]


@pytest.mark.parametrize("n", [1, 100], ids=["1-row", "100-rows"])
def test_an_integer_column_refuses_a_fraction_and_takes_whole_floats(n):
    batch = [[float(c) for c in range(WIDTH)] for _ in range(n)]
    check_rows(batch, spec("long"))
    batch[n - 1][0] = 0.5
    with pytest.raises(InvalidInput) as raised:
        check_rows(batch, spec("long"))
    assert raised.value.errors == [{"row": n - 1, "column": "f0", "message": "expected an integer, got 0.5"}]


def test_an_integer_past_float64s_range_is_not_taken_for_a_finite_float():
    batch = rows(100)
    batch[50][1] = 10**400
    # Not a float: its type is checked as any int is; the model input's conversion decides later.
    check_rows(batch, spec())
