"""One conversion: read the native file, convert it, prove it, hand back ONNX bytes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantserve.convert.base import INPUT, PROBABILITIES
from tenantserve.convert.graph import finish
from tenantserve.convert.proof import largest_difference, run_onnx, sample_rows
from tenantserve.convert.registry import converter_for, framework_for
from tenantserve.errors import LoadFailed


@dataclass(frozen=True, slots=True)
class Conversion:
    """A converted model and what proves it: ``rows`` ran on both with ``max_difference``."""

    onnx: bytes
    framework: str
    kind: str
    n_features: int
    versions: str
    rows: str
    max_difference: float
    tolerance: str

    def report(self) -> dict[str, object]:
        """What ``conversion.json`` beside the converted file says."""
        return {
            "framework": self.framework,
            "kind": self.kind,
            "input": {"name": INPUT, "datatype": "FP32", "shape": [-1, self.n_features]},
            "versions": self.versions,
            "proved_on": self.rows,
            "max_difference": self.max_difference,
            "tolerance": self.tolerance,
        }


def convert_artifact(folder: Path, model_file: str) -> Conversion:
    """``folder / model_file`` (a native file) as ONNX, proved equal on sample rows.

    Raises:
        MissingExtra: the framework's extra is not installed.
        LoadFailed: the file cannot be read or converted, or the result predicts otherwise.
    """
    framework = framework_for(model_file)
    if framework is None:
        raise LoadFailed(f"{model_file} is not a native model file tenantserve converts")
    converter = converter_for(framework)
    original = converter.open(folder / model_file)
    rows, source = sample_rows(folder, original.n_features)
    try:
        expected = original.predict(rows)
    except LoadFailed:
        raise
    except Exception as exc:  # the framework's own predict failed on the sample rows
        raise LoadFailed(
            f"{framework.name} could not predict the sample rows: {_reason(exc, folder)}"
        ) from exc
    try:
        model = finish(original.to_onnx(), original.kind, _classes(expected))
    except LoadFailed:
        raise
    except Exception as exc:  # converters raise anything: name it, never a host path
        raise LoadFailed(
            f"{framework.name} model could not be converted to ONNX: {_reason(exc, folder)}"
        ) from exc
    onnx_bytes: bytes = model.SerializeToString()
    difference = largest_difference(
        expected, run_onnx(onnx_bytes, rows), converter.tolerance, framework.name
    )
    return Conversion(
        onnx_bytes,
        framework.name,
        original.kind,
        original.n_features,
        converter.versions,
        source,
        difference,
        str(converter.tolerance),
    )


def _reason(exc: Exception, folder: Path) -> str:
    lines = str(exc).replace(str(folder), "").splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def _classes(outputs: dict[str, Any]) -> int | None:
    scores = outputs.get(PROBABILITIES)
    return int(scores.shape[1]) if scores is not None and scores.ndim == 2 else None
