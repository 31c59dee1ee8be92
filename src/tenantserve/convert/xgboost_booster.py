"""XGBoost boosters (``xgboost.json``, ``xgboost.ubj``): read as data, converted by onnxmltools.

Both are XGBoost's own model formats (JSON and Universal Binary JSON): trees and parameters,
no code. A ``reg:*`` objective with an identity link makes a regressor; ``binary:logistic``
and ``multi:softprob``/``multi:softmax`` a classifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxmltools
import xgboost as xgb
from onnxmltools.convert import convert_xgboost
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

_REGRESSION = frozenset({"reg:squarederror", "reg:absoluteerror", "reg:pseudohubererror"})
_CLASSIFICATION = frozenset({"binary:logistic", "multi:softprob", "multi:softmax"})


class _Booster:
    def __init__(self, booster: xgb.Booster, kind: Kind, objective: str) -> None:
        self._booster = booster
        self._objective = objective
        self.kind: Kind = kind
        self.n_features: int = booster.num_features()

    def predict(self, rows: Rows) -> Outputs:
        # The converter's sums are float32, as XGBoost's own; output_margin off: the link
        # (sigmoid, softmax) is applied as served.
        values = np.asarray(self._booster.predict(xgb.DMatrix(rows)), dtype=np.float32)
        if self.kind == "regressor":
            return {PREDICTIONS: values.reshape(-1)}
        if self._objective == "multi:softmax":
            raise LoadFailed("multi:softmax boosters give no probabilities: train multi:softprob")
        scores = np.stack([1 - values, values], axis=1) if values.ndim == 1 else values
        return {LABEL: scores.argmax(axis=1).astype(np.int64), PROBABILITIES: scores}

    def to_onnx(self) -> Any:
        return convert_xgboost(
            self._booster,
            initial_types=[(INPUT, FloatTensorType([None, self.n_features]))],
            target_opset=ML_OPSET,
        )


class XGBoostConverter:
    tolerance = Tolerance(atol=1e-5, rtol=1e-5)
    versions = f"xgboost={xgb.__version__};onnxmltools={onnxmltools.__version__}"

    def open(self, path: Path) -> _Booster:
        booster = xgb.Booster()
        try:
            # The format follows the file's extension: .json is JSON, .ubj is UBJSON.
            booster.load_model(str(path))
        except xgb.core.XGBoostError as exc:
            reason = str(exc).replace(str(path), path.name).splitlines()[0][:200]
            raise LoadFailed(f"{path.name} is not an XGBoost model: {reason}") from None
        booster.set_param({"nthread": 1})
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        if objective in _REGRESSION:
            return _Booster(booster, "regressor", objective)
        if objective in _CLASSIFICATION:
            return _Booster(booster, "classifier", objective)
        supported = ", ".join(sorted(_REGRESSION | _CLASSIFICATION))
        raise LoadFailed(f"XGBoost objective {objective!r} is not converted (only {supported})")


CONVERTER = XGBoostConverter()
