"""Proof of equality: the original and the converted model on the same rows.

Rows come from the artifact's ``sample.npy`` or ``sample.csv`` when it has one (the tenant's
own data proves the most), else they are generated: seeded normal rows at several scales
(0.1 to 1000) and a row of zeros, so that splits and weights at any of those scales are met.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tenantserve.convert.base import INPUT, LABEL, PROBABILITIES, Outputs, Rows, Tolerance
from tenantserve.errors import LoadFailed

SAMPLE_NPY = "sample.npy"
SAMPLE_CSV = "sample.csv"
MAX_SAMPLE_ROWS = 10_000
_SCALES = (0.1, 1.0, 10.0, 100.0, 1000.0)
_ROWS_PER_SCALE = 40


def sample_rows(folder: Path, n_features: int) -> tuple[Rows, str]:
    """Rows to prove a conversion on, and where they came from (for the report)."""
    npy, csv = folder / SAMPLE_NPY, folder / SAMPLE_CSV
    if npy.is_file():
        try:
            # allow_pickle=False: an object array is refused, never unpickled.
            array: npt.NDArray[Any] = np.load(npy, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise LoadFailed(f"{SAMPLE_NPY} is not a numeric .npy array ({exc})") from None
        return _checked(array, n_features, SAMPLE_NPY), SAMPLE_NPY
    if csv.is_file():
        return _checked(_read_csv(csv), n_features, SAMPLE_CSV), SAMPLE_CSV
    rng = np.random.default_rng(0)
    blocks = [rng.normal(0.0, scale, (_ROWS_PER_SCALE, n_features)) for scale in _SCALES]
    rows = np.concatenate([np.zeros((1, n_features)), *blocks]).astype(np.float32)
    return rows, f"{len(rows)} generated rows"


def _read_csv(path: Path) -> npt.NDArray[Any]:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]  # a header
    try:
        return np.loadtxt(io.StringIO("\n".join(lines)), delimiter=",", ndmin=2)
    except ValueError as exc:
        raise LoadFailed(f"{SAMPLE_CSV} holds a value that is not a number ({exc})") from None


def _numeric(line: str) -> bool:
    try:
        [float(cell) for cell in line.split(",")]
    except ValueError:
        return False
    return True


def _checked(array: npt.NDArray[Any], n_features: int, name: str) -> Rows:
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != n_features:
        raise LoadFailed(
            f"{name} must be a numeric table of rows with {n_features} columns "
            f"(it has dtype {array.dtype}, shape {list(array.shape)})"
        )
    if not 1 <= len(array) <= MAX_SAMPLE_ROWS:
        raise LoadFailed(f"{name} must hold 1 to {MAX_SAMPLE_ROWS} rows, not {len(array)}")
    rows: Rows = array.astype(np.float32)
    return rows


def run_onnx(model: bytes, rows: Rows) -> Outputs:
    """The converted model's outputs on ``rows``, run as the server runs it (CPU, 1 thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]
        return dict(zip(names, session.run(names, {INPUT: rows}), strict=True))
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise LoadFailed(f"the converted model does not run: {str(exc)[:300]}") from exc


def largest_difference(
    original: Outputs, converted: Outputs, tolerance: Tolerance, framework: str
) -> float:
    """The largest absolute difference over all outputs and rows, when within ``tolerance``.

    Labels must be equal, except in rows where the original's two best probabilities are
    within the tolerance of each other (a tie either way is a right answer).

    Raises:
        LoadFailed: an output differs beyond the tolerance; the message says by how much.
    """
    largest = 0.0
    for name, want in original.items():
        got = converted.get(name)
        if got is None or got.shape != want.shape:
            shape = None if got is None else list(got.shape)
            raise LoadFailed(
                f"conversion refused: output {name!r} has shape {shape}, "
                f"{framework} gives {list(want.shape)}"
            )
        if name == LABEL:
            _check_labels(want, got, original.get(PROBABILITIES), tolerance, framework)
            continue
        want64, got64 = want.astype(np.float64), got.astype(np.float64)
        same = (want64 == got64) | (np.isnan(want64) & np.isnan(got64))  # inf == inf too
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(got64 - want64))
            excess = np.where(same, 0.0, diff - (tolerance.atol + tolerance.rtol * np.abs(want64)))
        excess = np.nan_to_num(excess, nan=np.inf)
        worst = int(np.argmax(excess)) if excess.size else 0
        if excess.size and excess.flat[worst] > 0:
            row = np.unravel_index(worst, excess.shape)[0]
            raise LoadFailed(
                f"conversion refused: output {name!r} differs from {framework}'s by up to "
                f"{float(diff.flat[worst]):.6g} (row {row}: {float(got64.flat[worst]):.6g} "
                f"against {float(want64.flat[worst]):.6g}; tolerance {tolerance})"
            )
        largest = max(largest, float(diff.max()) if diff.size else 0.0)
    return largest


def _check_labels(
    want: npt.NDArray[Any],
    got: npt.NDArray[Any],
    scores: npt.NDArray[Any] | None,
    tolerance: Tolerance,
    framework: str,
) -> None:
    differ = want.astype(str) != got.astype(str)
    if scores is not None and scores.ndim == 2 and scores.shape[1] > 1:
        best = np.sort(scores.astype(np.float64), axis=1)
        differ &= best[:, -1] - best[:, -2] > 2 * (tolerance.atol + tolerance.rtol * best[:, -1])
    if differ.any():
        row = int(np.argmax(differ))
        raise LoadFailed(
            f"conversion refused: {int(differ.sum())} of {len(want)} labels differ from "
            f"{framework}'s (first at row {row}: {got[row]!r} against {want[row]!r})"
        )
