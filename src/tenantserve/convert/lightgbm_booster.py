"""LightGBM boosters (``lightgbm.txt``, ``Booster.save_model``): text, converted by onnxmltools.

``regression`` (and the other identity-link regression objectives) make a regressor;
``binary`` and ``multiclass`` a classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxmltools
from onnxmltools.convert import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from tenantserve.convert.base import (
    INPUT,
    LABEL,
    PREDICTIONS,
    PROBABILITIES,
    Kind,
    Outputs,
    Rows,
    Tolerance,
)
from tenantserve.convert.onnx_opset import ML_OPSET
from tenantserve.errors import LoadFailed

_REGRESSION = frozenset({"regression", "regression_l1", "huber", "fair", "quantile"})
_CLASSIFICATION = frozenset({"binary", "multiclass"})


class _Booster:
    def __init__(self, booster: lgb.Booster, kind: Kind) -> None:
        self._booster = booster
        self.kind: Kind = kind
        self.n_features: int = booster.num_feature()

    def predict(self, rows: Rows) -> Outputs:
        values = np.asarray(self._booster.predict(rows, num_threads=1), dtype=np.float32)
        if self.kind == "regressor":
            return {PREDICTIONS: values.reshape(-1)}
        scores = np.stack([1 - values, values], axis=1) if values.ndim == 1 else values
        return {LABEL: scores.argmax(axis=1).astype(np.int64), PROBABILITIES: scores}

    def to_onnx(self) -> Any:
        return convert_lightgbm(
            self._booster,
            initial_types=[(INPUT, FloatTensorType([None, self.n_features]))],
            target_opset=ML_OPSET,
            zipmap=False,
        )


class LightGBMConverter:
    # LightGBM sums its trees in double precision; ONNX Runtime's tree ensemble in float.
    tolerance = Tolerance(atol=1e-5, rtol=1e-5)
    versions = f"lightgbm={lgb.__version__};onnxmltools={onnxmltools.__version__}"

    def open(self, path: Path) -> _Booster:
        try:
            booster = lgb.Booster(model_file=str(path))
        except lgb.basic.LightGBMError as exc:
            reason = str(exc).replace(str(path), path.name).splitlines()[0][:200]
            raise LoadFailed(f"{path.name} is not a LightGBM model: {reason}") from None
        name = _objective(path)
        if name in _REGRESSION:
            return _Booster(booster, "regressor")
        if name in _CLASSIFICATION:
            return _Booster(booster, "classifier")
        supported = ", ".join(sorted(_REGRESSION | _CLASSIFICATION))
        raise LoadFailed(f"LightGBM objective {name!r} is not converted (only {supported})")


def _objective(path: Path) -> str:
    """The objective's name, from the model text's ``objective=<name> <params>`` line."""
    with path.open(encoding="utf-8", errors="replace") as text:
        for line in text:
            if line.startswith("objective="):
                return line.removeprefix("objective=").split(" ", 1)[0].strip()
            if line.startswith("Tree="):
                break
    return ""


CONVERTER = LightGBMConverter()
