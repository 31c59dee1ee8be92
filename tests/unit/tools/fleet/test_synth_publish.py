"""``fleet synth --kind mixed``: ONNX, scikit-learn, XGBoost and LightGBM tenants in one store."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tenantserve.cli import app
from tenantserve.convert.run import convert_artifact
from tenantserve.tools.fleet.native import write_native_model
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.synth_publish import synth_fleet


def test_mixed_synth_writes_each_kind_in_turn(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = CliRunner().invoke(
        app,
        ["fleet", "synth", "--models", "5", "--size-mb", "0.01", "--store", str(store),
         "--kind", "mixed"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = {
        "tenant-000/model-0000": "model.onnx",
        "tenant-001/model-0001": "sklearn.skops",
        "tenant-002/model-0002": "xgboost.json",
        "tenant-003/model-0003": "lightgbm.txt",
        "tenant-004/model-0004": "model.onnx",
    }
    for model_id, name in files.items():
        assert (store / model_id / name).is_file(), model_id
    for framework in ("sklearn", "xgboost", "lightgbm"):
        assert framework in result.stdout
    assert np.load(store / "tenant-002/model-0002/sample.npy").shape == (64, 16)


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "lightgbm"])
def test_each_native_tenant_converts_with_proof_on_its_sample(
    tmp_path: Path, framework: str
) -> None:
    path = write_native_model(tmp_path, framework, seed=3)
    conversion = convert_artifact(tmp_path, path.name)
    assert (conversion.kind, conversion.n_features, conversion.rows) == (
        "classifier",
        16,
        "sample.npy",
    )


def test_mixed_without_a_framework_names_the_extra_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real(name)
    )
    store = tmp_path / "store"
    with pytest.raises(ImportError, match=r"pip install 'tenantserve\[lightgbm\]'"):
        synth_fleet(
            models=4, size_bytes=10_000, seed=0, publisher=open_publisher(str(store)), kind="mixed"
        )
    assert not any(store.rglob("model.onnx"))
