"""``tenantserve convert PATH --out DIR``: a servable, proved ONNX artifact, or exit 1 and why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import xgboost as xgb
from typer.testing import CliRunner

from tenantserve.cli import app


def _booster(folder: Path) -> xgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    booster = xgb.train(
        {"objective": "reg:squarederror", "nthread": 1}, xgb.DMatrix(x, x[:, 1] * 2), 4
    )
    booster.save_model(folder / "xgboost.json")
    return booster


def test_convert_writes_a_servable_onnx_and_its_report(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    booster = _booster(source)
    result = CliRunner().invoke(app, ["convert", str(source), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "XGBoost regressor" in result.output
    report = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert report["proved_on"] == "201 generated rows"
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    rows = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)
    (got,) = session.run(["predictions"], {"input": rows})
    np.testing.assert_allclose(got, booster.predict(xgb.DMatrix(rows)), rtol=1e-5, atol=1e-5)


def test_convert_takes_the_file_itself_too(tmp_path: Path) -> None:
    _booster(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "xgboost.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file()


def test_convert_says_why_it_cannot(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "holds no native model file (sklearn.skops, xgboost.json" in result.output
    (tmp_path / "lightgbm.txt").write_text("not a model\n")
    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "lightgbm.txt is not a LightGBM model" in result.output
    assert not (tmp_path / "o").exists()


def test_convert_takes_a_pytorch_program(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Softmax(dim=1)).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (torch.zeros(2, 3),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "pytorch.pt2")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "PyTorch classifier" in result.output
    session = ort.InferenceSession(str(out / "model.onnx"))
    rows = np.linspace(-2, 2, 12, dtype=np.float32).reshape(4, 3)
    (got,) = session.run(["probabilities"], {"input": rows})
    with torch.no_grad():
        want = net(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
