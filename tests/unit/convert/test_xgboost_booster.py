"""XGBoost boosters: read as data; objectives without a served form are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from tenantserve.convert.run import convert_artifact
from tenantserve.convert.xgboost_booster import CONVERTER
from tenantserve.errors import LoadFailed


def _booster(objective: str) -> xgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(float) + (objective == "count:poisson")
    return xgb.train({"objective": objective, "nthread": 1}, xgb.DMatrix(x, y), 3)


def test_a_file_that_is_not_a_booster_is_refused(tmp_path: Path) -> None:
    (tmp_path / "xgboost.json").write_text('{"not": "a model"}')
    with pytest.raises(LoadFailed, match=r"xgboost.json is not an XGBoost model") as caught:
        CONVERTER.open(tmp_path / "xgboost.json")
    assert str(tmp_path) not in str(caught.value)  # no host path reaches a caller


def test_an_objective_without_a_served_form_is_refused(tmp_path: Path) -> None:
    _booster("count:poisson").save_model(tmp_path / "xgboost.json")
    with pytest.raises(LoadFailed, match=r"objective 'count:poisson' is not converted"):
        CONVERTER.open(tmp_path / "xgboost.json")


def test_a_binary_booster_serves_two_class_probabilities(tmp_path: Path) -> None:
    _booster("binary:logistic").save_model(tmp_path / "xgboost.ubj")
    conversion = convert_artifact(tmp_path, "xgboost.ubj")
    assert (conversion.kind, conversion.n_features) == ("classifier", 3)
    assert conversion.report()["input"] == {"name": "input", "datatype": "FP32", "shape": [-1, 3]}
    assert conversion.max_difference <= 1e-5
