"""SageMaker invocation bodies ⇄ numpy, mapped explicitly onto the model's declared inputs.

Requests (``Content-Type``; none means JSON):

* ``application/json`` — ``{"instances": [...]}``, ``{"inputs": [...]}`` or a bare ``[...]``:
  a list of instances, one per row of the batch.

  - plain instances (numbers, strings, lists) form the batch of the model's **only** input;
  - object instances ``{"<input name>": value, ...}`` feed each named input, stacked row by
    row — the way to call a model with several inputs;
  - ``{"inputs": {"<input name>": [...rows]}}`` (columns) feeds the named inputs directly.

* ``text/csv`` — one row per line, no header, into the model's only input as a 2-D array;
  for a string (BYTES) input of one column per row, one quoted text per line.
* ``text/plain`` — one instance per non-blank line, for a model whose only input is a string
  (BYTES): one support ticket per line.

A body that is not UTF-8 is refused with a 400 that says so.

Values are converted to each input's declared datatype without loss (see
:func:`~tenantserve.protocols.arrays.to_array`). An input declared ``[-1, 1]`` also takes a
flat list of rows: the trailing axis of size 1 is added.

Responses (``Accept``; none, ``*/*`` or JSON mean JSON):

* ``application/json`` — ``{"predictions": [...]}``, one entry per row: the row's value when
  the model has one output, else ``{"<output name>": value, ...}``. Outputs that do not share
  a batch dimension come back whole: ``{"predictions": {"<output name>": value}}``. A model
  with a declared top-k step (outputs ``macros`` and ``scores``) answers in product terms:
  ``{"predictions": [{"macros": [{"macro": "refund", "score": 0.93}, ...]}, ...]}``.
* ``text/csv`` — one output, one line per row; for top-k models ``macro,score,macro,score…``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from tenantserve.errors import InvalidInput, InvalidRequest
from tenantserve.protocols.arrays import to_array
from tenantserve.types import DATATYPE_TO_DTYPE, Tensors, TensorSpec

JSON = "application/json"
CSV = "text/csv"
TEXT = "text/plain"

# The outputs a manifest's top-k step adds (TopKPostprocess): label names and their scores.
MACROS = "macros"
SCORES = "scores"

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


def media_type(header: str | None) -> str:
    """The bare media type of a Content-Type or the first entry of an Accept header."""
    return (header or "").split(",", 1)[0].split(";", 1)[0].strip().lower()


def response_type(accept: str | None) -> str:
    """The response media type for ``accept``, checked before any work is done."""
    wanted = media_type(accept)
    if wanted in ("", "*/*", "application/*", JSON) or wanted.endswith("+json"):
        return JSON
    if wanted in (CSV, "text/*"):
        return CSV
    raise InvalidRequest(f"unsupported Accept {wanted[:64]!r}: use {JSON} or {CSV}")


def decode_invocation(
    body: bytes, content_type: str | None, inputs: Sequence[TensorSpec]
) -> dict[str, npt.NDArray[Any]]:
    """Input name → array for ``inputs`` (the model's signature), from one invocation body.

    Raises:
        InvalidRequest: an unsupported Content-Type or a malformed body.
        InvalidInput: values that do not fit the named input.
    """
    if not inputs:
        raise InvalidRequest("the model declares no inputs")
    for spec in inputs:
        if spec.datatype not in DATATYPE_TO_DTYPE:
            raise InvalidRequest(
                f"input {spec.name!r} has a datatype SageMaker bodies cannot carry"
            )
    kind = media_type(content_type) or JSON
    if kind == JSON or kind.endswith("+json"):
        return _from_json(body, inputs)
    if kind not in (CSV, TEXT):
        raise InvalidRequest(f"unsupported Content-Type {kind[:64]!r}: use {JSON}, {CSV} or {TEXT}")
    spec = _only(inputs, kind)
    text = _text(body, spec.name)
    if kind == TEXT:
        if spec.datatype != "BYTES":
            raise InvalidRequest(
                f"{TEXT} feeds string inputs; input {spec.name!r} is {spec.datatype}"
            )
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise InvalidInput(f"input {spec.name!r}: the body has no text")
        return {spec.name: _fit(spec, to_array(spec.name, "BYTES", lines))}
    return {spec.name: _fit(spec, _from_csv(text, spec))}


def encode_predictions(outputs: Tensors, kind: str) -> bytes:
    """The response body for ``outputs`` in ``kind`` (from :func:`response_type`)."""
    if MACROS in outputs and SCORES in outputs:
        return _ranked(outputs[MACROS], outputs[SCORES], kind)
    if kind == CSV:
        return _to_csv(outputs)
    plain = {name: _plain(array) for name, array in outputs.items()}
    rows = {array.shape[0] if array.ndim else -1 for array in outputs.values()}
    if len(plain) == 1:
        predictions: Any = next(iter(plain.values()))
    elif len(rows) == 1 and -1 not in rows:
        predictions = [
            {name: value[row] for name, value in plain.items()} for row in range(rows.pop())
        ]
    else:
        predictions = plain
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


def _from_json(body: bytes, inputs: Sequence[TensorSpec]) -> dict[str, npt.NDArray[Any]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        _text(body)  # a body that is not UTF-8 at all is told so, not sent to JSON's message
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if isinstance(doc, dict) and ("instances" in doc or "inputs" in doc):
        instances = doc["instances"] if "instances" in doc else doc["inputs"]
    elif isinstance(doc, list):
        instances = doc
    else:
        raise InvalidRequest('JSON body must be {"instances": [...]}, {"inputs": ...} or a list')
    if isinstance(instances, dict):
        return _columns(instances, inputs)
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest("'instances' must be a non-empty list")
    if all(isinstance(instance, dict) for instance in instances):
        names = [spec.name for spec in inputs]
        for instance in instances:
            _check_names(instance, names)
        return _columns({n: [instance[n] for instance in instances] for n in names}, inputs)
    spec = _only(inputs, "a list of plain instances")
    return {spec.name: _fit(spec, to_array(spec.name, spec.datatype, instances))}


def _columns(columns: Mapping[str, Any], inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    _check_names(columns, [spec.name for spec in inputs])
    return {s.name: _fit(s, to_array(s.name, s.datatype, columns[s.name])) for s in inputs}


def _check_names(given: Mapping[str, Any], names: list[str]) -> None:
    for name in given:
        if name not in names:
            raise InvalidInput(f"unknown input {name[:64]!r}; the model's inputs are {names}")
    for name in names:
        if name not in given:
            raise InvalidInput(f"input {name!r} is missing")


def _only(inputs: Sequence[TensorSpec], form: str) -> TensorSpec:
    if len(inputs) > 1:
        names = [spec.name for spec in inputs]
        raise InvalidInput(
            f"{form} feeds one input but the model has {names}: send JSON instances that are "
            "objects keyed by input name"
        )
    return inputs[0]


def _text(body: bytes, name: str | None = None) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError:
        if name is not None:  # the body is that input's text: say which input it failed
            raise InvalidInput(f"input {name!r}: request body is not UTF-8 text") from None
        raise InvalidRequest("request body is not UTF-8 text") from None


def _from_csv(text: str, spec: TensorSpec) -> npt.NDArray[Any]:
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:
        raise InvalidInput(f"input {spec.name!r}: the CSV body is malformed: {exc}") from None
    if not rows:
        raise InvalidInput(f"input {spec.name!r}: the CSV body has no rows")
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise InvalidInput(
                f"input {spec.name!r}: CSV row {number} has {len(row)} values, row 1 has {width}"
            )
    if spec.datatype == "BYTES":
        if width != 1 and (len(spec.shape) == 1 or spec.shape[-1] == 1):
            raise InvalidInput(
                f"input {spec.name!r} takes one text per row; CSV row 1 has {width} values "
                "(quote a text that holds commas)"
            )
        return to_array(spec.name, "BYTES", rows)
    parse = _cell_parser(DATATYPE_TO_DTYPE[spec.datatype].kind)
    try:
        values = [[parse(cell) for cell in row] for row in rows]
    except ValueError:
        raise InvalidInput(f"input {spec.name!r}: a CSV value is not a {spec.datatype}") from None
    return to_array(spec.name, spec.datatype, values)


def _cell_parser(kind: str) -> Any:
    if kind == "b":
        return _parse_bool
    if kind in "iu":
        return lambda cell: int(cell.strip())
    return lambda cell: float(cell.strip())


def _parse_bool(cell: str) -> bool:
    word = cell.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(cell)


def _fit(spec: TensorSpec, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # A flat list of rows for an input declared [-1, 1] (common for text and single-feature
    # models) gets its trailing axis, rather than failing a shape check in the runtime.
    if spec.shape and spec.shape[-1] == 1 and array.ndim == len(spec.shape) - 1:
        return array[..., np.newaxis]
    # And a one-column CSV body for a 1-D input loses its column axis.
    if len(spec.shape) == 1 and array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array


def _plain(array: npt.NDArray[Any]) -> Any:
    """What orjson serialises directly: a C-contiguous native array, nested str lists, a scalar."""
    if array.dtype.kind in "OSU":
        if array.ndim == 0:
            return _text_of(array.item())
        return np.vectorize(_text_of, otypes=[object])(array).tolist() if array.size else []
    if array.ndim == 0:
        return array.item()  # orjson serialises no 0-d arrays
    if array.dtype.kind in "iu":
        # ONNX Runtime's int64 is C's long long, a NumPy type orjson does not take; "i8" is.
        sized = np.dtype(f"{array.dtype.kind}{array.dtype.itemsize}")  # astype keeps longlong
        return np.ascontiguousarray(array.astype(sized.newbyteorder("="), copy=False)).view(sized)
    return array.astype(array.dtype.newbyteorder("="), order="C", copy=False)


def _text_of(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _to_csv(outputs: Tensors) -> bytes:
    if len(outputs) != 1:
        raise InvalidRequest(f"{CSV} answers carry one output; the model has {list(outputs)}")
    array = next(iter(outputs.values()))
    if array.ndim > 2:
        raise InvalidRequest(f"{CSV} answers carry 1-D or 2-D outputs; this one is {array.ndim}-D")
    if array.size == 0:
        return b""
    table = array.reshape(array.shape[0] if array.ndim else 1, -1)
    if table.dtype.kind in "OSU":
        table = np.vectorize(_text_of, otypes=[object])(table) if table.size else table
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table.tolist())
    return out.getvalue().encode("utf-8")


def _ranked(macros: npt.NDArray[Any], scores: npt.NDArray[Any], kind: str) -> bytes:
    """Top-k answers: each row's macros, best first, with their scores."""
    names = [[_text_of(name) for name in row] for row in macros.tolist()]
    # float32 scalars print at their own precision (0.93, not 0.9300000071525574).
    values = [list(row) for row in np.asarray(scores, dtype=np.float32)]
    rows = [
        list(zip(row, row_values, strict=True))
        for row, row_values in zip(names, values, strict=True)
    ]
    if kind == CSV:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(
            [cell for name, score in row for cell in (name, str(score))] for row in rows
        )
        return out.getvalue().encode("utf-8")
    predictions = [
        {MACROS: [{"macro": name, "score": score} for name, score in row]} for row in rows
    ]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
