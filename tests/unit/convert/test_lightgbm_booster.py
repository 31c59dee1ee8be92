"""LightGBM boosters: read as text; objectives without a served form are refused by name."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from tenantserve.convert.lightgbm_booster import CONVERTER
from tenantserve.convert.run import convert_artifact
from tenantserve.errors import LoadFailed


def _save(objective: str, path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3))
    y = np.abs(x[:, 0]) + 1
    params = {"objective": objective, "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    lgb.train(params, lgb.Dataset(x, y), 3).save_model(path)


def test_a_file_that_is_not_a_booster_is_refused(tmp_path: Path) -> None:
    (tmp_path / "lightgbm.txt").write_text("hello\n")
    with pytest.raises(LoadFailed, match=r"lightgbm.txt is not a LightGBM model"):
        CONVERTER.open(tmp_path / "lightgbm.txt")


def test_an_objective_without_a_served_form_is_refused(tmp_path: Path) -> None:
    _save("poisson", tmp_path / "lightgbm.txt")
    with pytest.raises(LoadFailed, match=r"objective 'poisson' is not converted"):
        CONVERTER.open(tmp_path / "lightgbm.txt")


def test_a_regressor_serves_flat_predictions(tmp_path: Path) -> None:
    _save("regression", tmp_path / "lightgbm.txt")
    conversion = convert_artifact(tmp_path, "lightgbm.txt")
    assert (conversion.framework, conversion.kind) == ("LightGBM", "regressor")
    assert conversion.rows == "201 generated rows"
