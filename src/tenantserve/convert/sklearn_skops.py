"""scikit-learn estimators and pipelines saved with skops (``sklearn.skops``), via skl2onnx.

skops stores an object tree as data and rebuilds only types it is told to trust: its own
default list (scikit-learn's estimators, NumPy and SciPy containers) plus, here,
:data:`TRUSTED_TYPES`, scikit-learn's compiled tree and neighbour structures. A file naming
any other type is refused before anything is built, with the types in the error; pickle and
joblib are never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import skl2onnx
import sklearn
import skops
import skops.io as sio
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import is_classifier, is_regressor

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

# Beyond skops' defaults: the compiled structures that trees, boosted trees and neighbour
# models hold, rebuilt by skops from arrays (no code of the file's runs).
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
    }
)


class _Estimator:
    def __init__(self, estimator: Any, kind: Kind, n_features: int) -> None:
        self._estimator = estimator
        self.kind: Kind = kind
        self.n_features = n_features

    def predict(self, rows: Rows) -> Outputs:
        if self.kind == "regressor":
            values = np.asarray(self._estimator.predict(rows), dtype=np.float32)
            return {PREDICTIONS: values.reshape(-1)}
        scores = np.asarray(self._estimator.predict_proba(rows), dtype=np.float32)
        return {LABEL: np.asarray(self._estimator.predict(rows)), PROBABILITIES: scores}

    def to_onnx(self) -> Any:
        return convert_sklearn(
            self._estimator,
            initial_types=[(INPUT, FloatTensorType([None, self.n_features]))],
            target_opset={"": ML_OPSET, "ai.onnx.ml": 3},
        )


class SklearnConverter:
    # skl2onnx computes in float32 where scikit-learn uses float64 (linear models, scalers).
    tolerance = Tolerance(atol=1e-4, rtol=1e-4)
    versions = (
        f"scikit-learn={sklearn.__version__};skops={skops.__version__};"
        f"skl2onnx={skl2onnx.__version__}"
    )

    def open(self, path: Path) -> _Estimator:
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:  # skops raises zipfile, JSON and its own errors
            raise LoadFailed(f"{path.name} is not a skops file ({type(exc).__name__})") from None
        refused = sorted(set(untrusted) - TRUSTED_TYPES)
        if refused:
            raise LoadFailed(
                f"{path.name} names types tenantserve does not trust: {', '.join(refused[:5])} "
                "(scikit-learn estimators and pipelines only)"
            )
        try:
            estimator = sio.load(path, trusted=list(untrusted))
        except Exception as exc:
            raise LoadFailed(
                f"{path.name} could not be read by skops ({type(exc).__name__})"
            ) from None
        if is_classifier(estimator):
            if not hasattr(estimator, "predict_proba"):
                raise LoadFailed(
                    "a classifier without predict_proba cannot be served with probabilities"
                )
            kind: Kind = "classifier"
        elif is_regressor(estimator):
            kind = "regressor"
        else:
            raise LoadFailed(f"{type(estimator).__name__} is neither a classifier nor a regressor")
        n_features = getattr(estimator, "n_features_in_", None)
        if not isinstance(n_features, int):
            raise LoadFailed(f"{type(estimator).__name__} is not fitted (no n_features_in_)")
        return _Estimator(estimator, kind, n_features)


CONVERTER = SklearnConverter()
