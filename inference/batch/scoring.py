"""Score one chunk: parse its records, check them against the signature, predict, append the predictions.

The checks and the model call are the online path's own: `inference.validation`
(validate_array, check_rows, normalise_rows, to_model_input), the MLflow CSV codec's cell
parsing, and `LoadedModel.predict` from the model cache, passed in as `predict`.

Fast path, for all-numeric signatures and CSV chunks without quotes: pandas' C parser reads
the chunk into one float array, validate_array checks it whole, and each input line is
copied to the output unchanged with the prediction cells appended. Anything the fast path
does not accept (a string in a number column, a missing value, a ragged line) goes through
the row path, which parses each cell as the MLflow CSV codec does and names the bad row and
column, so both paths accept and refuse exactly the same cells.

Rows are numbered from 0 over the whole file, header excluded (row 0 is the first data
row), as the online API numbers the rows of a request.

A multi-output model (multi-label classifiers, regressors on several targets) answers one
list of outputs per row, as the online API does: in JSON lines the prediction is that list,
in CSV its single prediction cell holds it as a JSON array, so the result's columns do not
depend on the model's answer.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from inference.batch.inputs import CSV
from inference.protocols.mlflow import _csv_cell
from inference.validation import InputSpec, check_rows, normalise_rows, to_model_input, validate_array
from platform_site.errors import InvalidInput, ModelhostError

Predictor = Callable[[Any], tuple[np.ndarray, "np.ndarray | None"]]
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class ModelFailed(Exception):
    """The model itself raised on valid input: the same input would fail again, so no retry."""


@dataclass(frozen=True)
class ChunkLayout:
    """What every chunk of a job shares: the file's columns, the signature and the output options."""

    input_format: str
    columns: tuple[str, ...]  # in file order
    spec: InputSpec
    want_proba: bool
    skip_bad_rows: bool
    classes: tuple | None

    @classmethod
    def build(
        cls,
        *,
        input_format: str,
        columns: list[str],
        spec: InputSpec,
        want_proba: bool,
        skip_bad_rows: bool,
        classes,
        chunk_rows: int,
    ):
        # A chunk may be as long as the job's chunk size, whatever the per-request row limit.
        spec = replace(spec, max_rows=max(spec.max_rows, chunk_rows))
        return cls(
            input_format=input_format,
            columns=tuple(columns),
            spec=spec,
            want_proba=want_proba,
            skip_bad_rows=skip_bad_rows,
            classes=tuple(classes) if classes is not None else None,
        )

    @property
    def positional(self) -> bool:
        return not self.spec.named

    def file_positions(self) -> list[int | None]:
        """For each signature column, its position in the file (None when the file leaves it out)."""
        if self.positional:
            return list(range(len(self.spec.columns)))
        where = {name: i for i, name in enumerate(self.columns)}
        return [where.get(column.name) for column in self.spec.columns]

    def output_columns(self) -> list[str]:
        names = ["prediction"]
        if self.want_proba and self.classes is not None:
            names += [f"probability_{label}" for label in self.classes]
        if self.skip_bad_rows:
            names.append("error")
        return names

    def header_line(self) -> bytes:
        """The result's CSV header: the input's columns, then the appended ones."""
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerow([*self.columns, *self.output_columns()])
        return out.getvalue().encode()


@dataclass
class ScoredChunk:
    body: bytes
    rows: int
    rows_failed: int
    sample_inputs: list
    sample_outputs: list


def row_error(row: int, column: str, message: str) -> InvalidInput:
    return InvalidInput(f"Row {row}, column '{column}': {message}.", errors=[{"row": row, "column": column, "message": message}])


def score_records(data: bytes, *, layout: ChunkLayout, first_row: int, predict: Predictor, sample_rows: int = 0) -> ScoredChunk:
    """The chunk's output lines; raises InvalidInput naming the first bad row unless bad rows are skipped."""
    if layout.input_format == CSV:
        return _score_csv(data, layout=layout, first_row=first_row, predict=predict, sample_rows=sample_rows)
    return _score_jsonl(data, layout=layout, first_row=first_row, predict=predict, sample_rows=sample_rows)


def _predict(predict: Predictor, x) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        predictions, probabilities = predict(x)
    except ModelhostError as exc:
        if exc.code == "model_error":  # the runner reports the model's own error
            raise ModelFailed(exc.detail) from exc
        raise
    except Exception as exc:  # the model's own error (a bad pipeline, a dtype it refuses)
        raise ModelFailed(f"The model raised {type(exc).__name__}: {exc}") from exc
    predictions = np.asarray(predictions)
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions.reshape(len(predictions))
    probabilities = None if probabilities is None else np.asarray(probabilities)
    # Each row's answer is written beside it: a short answer would drop rows from the result file.
    answered = {len(a) if a.ndim else 1 for a in (predictions, probabilities) if a is not None}
    if answered != {len(x)}:
        lengths = " and ".join(map(str, sorted(answered)))
        raise ModelFailed(f"The model's output has a length of {lengths}; its input has {len(x)} rows.")
    return predictions, probabilities


def _sample(x, rows: int) -> list:
    if rows <= 0:
        return []
    if hasattr(x, "iloc"):  # a DataFrame
        return x.iloc[:rows].to_numpy().tolist()
    if isinstance(x, np.ndarray):
        return x[:rows].tolist()
    return list(x[:rows])


# ------------------------------------------------------------------------------------- CSV


def _csv_field(text: str) -> str:
    if text and (text[0] in " \t" or text[-1] in " \t" or any(c in text for c in ',"\n\r')):
        return '"' + text.replace('"', '""') + '"'
    return text


def _value_texts(values: np.ndarray, *, escape: bool) -> list[str]:
    """Each prediction as text: shortest round-trip floats; labels CSV-quoted when `escape` and needed;
    a multi-output row's outputs as a JSON array."""
    if values.ndim > 1:
        texts = [orjson.dumps(row).decode() for row in values.reshape(len(values), -1).tolist()]
        return [_csv_field(text) for text in texts] if escape else texts
    if values.dtype.kind == "f":
        return [repr(v) for v in values.tolist()]
    labels, inverse = np.unique(values, return_inverse=True)
    texts = [str(label) for label in labels.tolist()]
    if escape:
        texts = [_csv_field(text) for text in texts]
    return [texts[i] for i in inverse.reshape(-1).tolist()]


def _probability_texts(probabilities: np.ndarray | None, rows: int, layout: ChunkLayout) -> list[list[str]]:
    if probabilities is None:
        return [[""] * len(layout.classes)] * rows
    return [[repr(p) for p in row] for row in probabilities.tolist()]


def _prediction_cells(predictions: np.ndarray, probabilities: np.ndarray | None, layout: ChunkLayout) -> list[str]:
    """Per row, the appended cells as CSV text joined by commas (no leading comma)."""
    cells = _value_texts(predictions, escape=True)
    if layout.want_proba and layout.classes is not None:
        if probabilities is None:
            blank = ",".join([""] * len(layout.classes))
            cells = [f"{p},{blank}" for p in cells]
        else:
            cells = [p + "," + ",".join(map(repr, q)) for p, q in zip(cells, probabilities.tolist(), strict=True)]
    return cells


def _line_suffixes(predictions: np.ndarray, probabilities: np.ndarray | None, layout: ChunkLayout) -> list[bytes]:
    """Per row, what follows the input line: the appended cells (an empty error cell if skipping) and the newline."""
    tail = ",\n" if layout.skip_bad_rows else "\n"  # good rows have an empty error cell
    if predictions.dtype.kind != "f" and predictions.ndim == 1 and not (layout.want_proba and layout.classes is not None):
        # A classifier's labels are few: format each once and share the bytes between rows.
        labels, inverse = np.unique(predictions, return_inverse=True)
        table = [("," + _csv_field(str(label)) + tail).encode() for label in labels.tolist()]
        return [table[i] for i in inverse.reshape(-1).tolist()]
    return [("," + cell + tail).encode() for cell in _prediction_cells(predictions, probabilities, layout)]


def _prediction_values(predictions: np.ndarray, probabilities: np.ndarray | None, layout: ChunkLayout) -> list[list[str]]:
    """Per row, the appended cells as plain text, for csv.writer."""
    values = [[p] for p in _value_texts(predictions, escape=False)]
    if layout.want_proba and layout.classes is not None:
        values = [p + q for p, q in zip(values, _probability_texts(probabilities, len(values), layout), strict=True)]
    return values


def _fast_numeric_array(data: bytes, *, layout: ChunkLayout, lines: int) -> np.ndarray | None:
    """The chunk as a checked float array in signature order, or None to take the row path."""
    import pandas as pd  # here: the web imports this module (batch submission) and never needs pandas

    try:
        frame = pd.read_csv(io.BytesIO(data), header=None, dtype=np.float64, engine="c")
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if frame.shape != (lines, len(layout.columns)):
        return None
    array = frame.to_numpy()
    positions = layout.file_positions()
    if positions != list(range(array.shape[1])):
        columns = [array[:, p] if p is not None else np.full(lines, np.nan) for p in positions]
        array = np.column_stack(columns) if columns else array[:, :0]
    try:
        return validate_array(array, layout.spec)
    except InvalidInput:
        return None


def _score_csv(data: bytes, *, layout: ChunkLayout, first_row: int, predict: Predictor, sample_rows: int) -> ScoredChunk:
    if layout.spec.all_numeric and b'"' not in data:
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        x = _fast_numeric_array(data, layout=layout, lines=len(lines))
        if x is not None:
            model_input = to_model_input(x, layout.spec) if layout.spec.wants_frame else x
            predictions, probabilities = _predict(predict, model_input)
            suffixes = _line_suffixes(predictions, probabilities, layout)
            if b"\r" in data:
                lines = [line.rstrip(b"\r") for line in lines]
            body = b"".join(itertools.chain.from_iterable(zip(lines, suffixes, strict=True)))
            return ScoredChunk(
                body=body,
                rows=len(lines),
                rows_failed=0,
                sample_inputs=_sample(x, sample_rows),
                sample_outputs=predictions[:sample_rows].tolist(),
            )
    return _score_csv_rows(data, layout=layout, first_row=first_row, predict=predict, sample_rows=sample_rows)


def _score_csv_rows(data: bytes, *, layout: ChunkLayout, first_row: int, predict: Predictor, sample_rows: int) -> ScoredChunk:
    spec = layout.spec
    width = len(layout.columns)
    positions = layout.file_positions()
    kinds = [column.type for column in spec.columns]
    records = [record for record in csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline="")) if record]
    rows: list[list[Any]] = []
    failures: dict[int, tuple[str, str]] = {}
    for index, record in enumerate(records):
        if len(record) > width:
            failures[index] = ("*", f"expected {width} fields like the header, got {len(record)}")
            rows.append([])
            continue
        if len(record) < width:
            record.extend([""] * (width - len(record)))  # pandas pads short lines with missing values
        rows.append([None if p is None else _csv_cell(record[p], kind) for p, kind in zip(positions, kinds, strict=True)])
    good = _check_each(rows, spec, failures)
    _raise_first_failure(failures, first_row=first_row, layout=layout)
    predictions, probabilities = _predict_good(rows, good, layout=layout, predict=predict)
    appended = dict(zip(good, _prediction_values(predictions, probabilities, layout), strict=True)) if good else {}
    blank = [""] * (len(layout.output_columns()) - (1 if layout.skip_bad_rows else 0))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for index, record in enumerate(records):
        fields = (record + [""] * width)[:width]  # keep the columns under their header
        if index in failures:
            column, message = failures[index]
            writer.writerow(fields + blank + [f"column '{column}': {message}"])
        else:
            writer.writerow(fields + appended[index] + ([""] if layout.skip_bad_rows else []))
    return ScoredChunk(
        body=out.getvalue().encode(),
        rows=len(records),
        rows_failed=len(failures),
        sample_inputs=[rows[i] for i in good[:sample_rows]],
        sample_outputs=predictions[:sample_rows].tolist() if good else [],
    )


# -------------------------------------------------------------------------------- JSON lines


def _score_jsonl(data: bytes, *, layout: ChunkLayout, first_row: int, predict: Predictor, sample_rows: int) -> ScoredChunk:
    spec = layout.spec
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    objects: list[Any] = []
    failures: dict[int, tuple[str, str]] = {}
    for index, line in enumerate(lines):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            failures[index] = ("*", f"not valid JSON: {exc}")
            value = None
        else:
            if not isinstance(value, (dict, list)):
                failures[index] = ("*", "expected an object keyed by feature name or a list in signature order")
                value = None
        objects.append(value)
    rows: list[list[Any]] = [[] for _ in objects]
    valid = [i for i in range(len(objects)) if i not in failures]
    try:
        for i, row in zip(valid, normalise_rows([objects[i] for i in valid], spec) if valid else [], strict=True):
            rows[i] = row
    except InvalidInput:
        for i in valid:  # one row at a time, to name each bad one
            try:
                rows[i] = normalise_rows([objects[i]], spec)[0]
            except InvalidInput as exc:
                detail = exc.errors[0] if exc.errors else {}
                failures[i] = (str(detail.get("column", "*")), str(detail.get("message", exc.detail)))
    good = _check_each(rows, spec, failures)
    _raise_first_failure(failures, first_row=first_row, layout=layout)
    predictions, probabilities = _predict_good(rows, good, layout=layout, predict=predict)
    prediction_list = predictions.tolist() if good else []
    probability_list = probabilities.tolist() if (good and probabilities is not None) else None
    labels = [f"probability_{label}" for label in layout.classes] if (layout.want_proba and layout.classes is not None) else []
    out = []
    position = {index: i for i, index in enumerate(good)}
    for index, value in enumerate(objects):
        if index in failures:
            column, message = failures[index]
            error = f"column '{column}': {message}"
            appended = [None, *([None] * len(labels))]
            if value is None:
                value = {"input": lines[index].decode("utf-8", errors="replace")}
        else:
            i = position[index]
            error = None
            probs = probability_list[i] if probability_list is not None else [None] * len(labels)
            appended = [prediction_list[i], *probs] if labels else [prediction_list[i]]
        if isinstance(value, dict):
            value = dict(value)
            value["prediction"] = appended[0]
            for label, p in zip(labels, appended[1:], strict=True):
                value[label] = p
            if layout.skip_bad_rows:
                value["error"] = error
        else:
            value = [*value, *appended] + ([error] if layout.skip_bad_rows else [])
        out.append(orjson.dumps(value, option=JSON_OPTIONS))
        out.append(b"\n")
    sample_x = [rows[i] for i in good[:sample_rows]]
    return ScoredChunk(
        body=b"".join(out),
        rows=len(lines),
        rows_failed=len(failures),
        sample_inputs=sample_x,
        sample_outputs=prediction_list[:sample_rows],
    )


# ----------------------------------------------------------------------------------- shared


def _check_each(rows: list[list[Any]], spec: InputSpec, failures: dict[int, tuple[str, str]]) -> list[int]:
    """Indexes of the rows that pass check_rows; the others go to `failures` with column and message."""
    candidates = [i for i in range(len(rows)) if i not in failures]
    try:
        check_rows([rows[i] for i in candidates], spec)  # one pass when every row is fine
        return candidates
    except InvalidInput:
        pass
    good = []
    for i in candidates:
        try:
            check_rows([rows[i]], spec)
        except InvalidInput as exc:
            detail = exc.errors[0] if exc.errors else {}
            failures[i] = (str(detail.get("column", "*")), str(detail.get("message", exc.detail)))
        else:
            good.append(i)
    return good


def _raise_first_failure(failures: dict[int, tuple[str, str]], *, first_row: int, layout: ChunkLayout) -> None:
    if failures and not layout.skip_bad_rows:
        index = min(failures)
        column, message = failures[index]
        raise row_error(first_row + index, column, message)


def _predict_good(rows, good: list[int], *, layout: ChunkLayout, predict: Predictor):
    if not good:
        return np.empty(0), None
    x = to_model_input([rows[i] for i in good], layout.spec)
    return _predict(predict, x)
