"""A conversion end to end: refused when the result differs beyond the tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge

from tenantserve.convert import sklearn_skops
from tenantserve.convert.base import Tolerance
from tenantserve.convert.run import convert_artifact
from tenantserve.errors import LoadFailed


def _ridge(folder: Path) -> None:
    x, y = load_diabetes(return_X_y=True)
    sio.dump(Ridge().fit(x, y), folder / "sklearn.skops")
    np.save(folder / "sample.npy", x[:30])


def test_a_ridge_converts_and_is_proved_on_the_tenants_sample(tmp_path: Path) -> None:
    _ridge(tmp_path)
    conversion = convert_artifact(tmp_path, "sklearn.skops")
    assert conversion.rows == "sample.npy"
    assert 0 < conversion.max_difference <= 1e-3  # float32 against scikit-learn's float64


def test_a_result_beyond_the_tolerance_is_refused_with_the_largest_difference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ridge(tmp_path)
    # No tolerance at all: float32 arithmetic cannot match scikit-learn's float64 exactly.
    monkeypatch.setattr(sklearn_skops.SklearnConverter, "tolerance", Tolerance(0.0, 0.0))
    with pytest.raises(LoadFailed, match=r"output 'predictions' differs from scikit-learn's by"):
        convert_artifact(tmp_path, "sklearn.skops")


def test_a_file_that_is_not_native_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match=r"model.onnx is not a native model file"):
        convert_artifact(tmp_path, "model.onnx")
