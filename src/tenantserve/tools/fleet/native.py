"""Native tenant models for a mixed fleet: scikit-learn (skops), XGBoost and LightGBM files.

Each is a 4-class classifier on the synthetic models' input (FP32 [N, 16]), trained on seeded
rows (the class is the largest of four random projections, plus noise), saved as its
framework saves it, with a ``sample.npy`` of training rows for the server's proof of
equality. The server converts them on first load (docs/frameworks.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

FRAMEWORKS = ("sklearn", "xgboost", "lightgbm")
N_FEATURES = 16
N_CLASSES = 4
_ROWS = 600
_SAMPLE_ROWS = 64


class MissingFramework(ImportError):
    """A framework the mixed fleet needs is not installed; ``str()`` names the extra."""


def write_native_model(dest: Path, framework: str, *, seed: int) -> Path:
    """Write ``framework``'s model file and ``sample.npy`` into ``dest`` (made); the file's path.

    Raises:
        MissingFramework: the framework (or skops) is not installed.
        ValueError: ``framework`` is not one of :data:`FRAMEWORKS`.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(_ROWS, N_FEATURES)).astype(np.float32)
    projections = rng.normal(size=(N_FEATURES, N_CLASSES))
    y = np.argmax(x @ projections + rng.normal(scale=0.5, size=(_ROWS, N_CLASSES)), axis=1)
    dest.mkdir(parents=True, exist_ok=True)
    np.save(dest / "sample.npy", x[:_SAMPLE_ROWS])
    try:
        if framework == "sklearn":
            return _sklearn(dest, x, y)
        if framework == "xgboost":
            return _xgboost(dest, x, y, seed)
        if framework == "lightgbm":
            return _lightgbm(dest, x, y, seed)
    except ImportError as exc:
        raise MissingFramework(
            f"a mixed fleet needs {framework}: pip install 'tenantserve[{framework}]' "
            f"(missing: {exc.name or exc})"
        ) from None
    raise ValueError(f"unknown framework {framework!r}; one of {', '.join(FRAMEWORKS)}")


def _sklearn(dest: Path, x: Array, y: Array) -> Path:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path = dest / "sklearn.skops"
    sio.dump(model, path)
    return path


def _xgboost(dest: Path, x: Array, y: Array, seed: int) -> Path:
    import xgboost as xgb

    params = {"objective": "multi:softprob", "num_class": N_CLASSES, "max_depth": 3,
              "nthread": 1, "seed": seed % 2**31}  # fmt: skip
    booster = xgb.train(params, xgb.DMatrix(x, y), num_boost_round=10)
    path = dest / "xgboost.json"
    booster.save_model(path)
    return path


def _lightgbm(dest: Path, x: Array, y: Array, seed: int) -> Path:
    import lightgbm as lgb

    params = {"objective": "multiclass", "num_class": N_CLASSES, "num_leaves": 7,
              "num_threads": 1, "verbose": -1, "seed": seed % 2**31}  # fmt: skip
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=10)
    path = dest / "lightgbm.txt"
    booster.save_model(path)
    return path
