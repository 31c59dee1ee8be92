"""Synthetic models: valid ONNX of the asked size, same bytes for the same seed, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fixtures.models import BadArtifactsStore, ModelStoreDir
from tenantserve.tools.fleet.synth import write_fleet, write_synthetic_model


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size_bytes", [50_000, 1_000_000, 3_000_000])
def test_model_loads_with_signature_and_size(tmp_path: Path, size_bytes: int) -> None:
    folder = write_synthetic_model(tmp_path / "acme" / "m", size_bytes=size_bytes, seed=3)
    model_file = folder / "model.onnx"
    session = _session(model_file)

    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("input", "tensor(float)", 16)
    assert (out.name, out.type, out.shape[1]) == ("output", "tensor(float)", 4)
    result = session.run(None, {"input": np.ones((3, 16), dtype=np.float32)})[0]
    assert result.shape == (3, 4)
    assert np.isfinite(result).all()
    assert abs(model_file.stat().st_size - size_bytes) < 0.05 * size_bytes + 2_000


def test_manifest_describes_the_file(tmp_path: Path) -> None:
    folder = write_synthetic_model(tmp_path / "m", size_bytes=100_000, seed=1, n_features=8)
    manifest = json.loads((folder / "model.json").read_text())
    data = (folder / "model.onnx").read_bytes()

    assert manifest["runtime"] == "onnx"
    assert manifest["model_file"] == "model.onnx"
    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["memory_hint_bytes"] >= len(data)
    assert all(isinstance(v, str) for v in manifest["metadata"].values())
    assert _session(folder / "model.onnx").get_inputs()[0].shape[1] == 8


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_synthetic_model(tmp_path / "a", size_bytes=200_000, seed=5)
    b = write_synthetic_model(tmp_path / "b", size_bytes=200_000, seed=5)
    c = write_synthetic_model(tmp_path / "c", size_bytes=200_000, seed=6)

    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    assert (a / "model.onnx").read_bytes() != (c / "model.onnx").read_bytes()


def test_rewrite_replaces_folder_and_leaves_no_temporaries(tmp_path: Path) -> None:
    dest = tmp_path / "acme" / "m"
    write_synthetic_model(dest, size_bytes=100_000, seed=1)
    write_synthetic_model(dest, size_bytes=100_000, seed=2)

    assert sorted(p.name for p in (tmp_path / "acme").iterdir()) == ["m"]
    assert json.loads((dest / "model.json").read_text())["metadata"]["seed"] == "2"


def test_write_fleet_spreads_models_over_tenants(tmp_path: Path) -> None:
    ids = write_fleet(tmp_path, models=5, size_bytes=20_000, seed=0, tenants=2)

    assert ids == [f"tenant-{i % 2:03d}/model-{i:04d}" for i in range(5)]
    assert all((tmp_path / i / "model.onnx").is_file() for i in ids)
    digests = {(tmp_path / i / "model.onnx").read_bytes() for i in ids}
    assert len(digests) == 5
    assert write_fleet(tmp_path / "x", models=2, size_bytes=20_000, seed=0, tenants=None) == [
        "tenant-000/model-0000",
        "tenant-001/model-0001",
    ]


def test_invalid_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        write_synthetic_model(tmp_path / "m", size_bytes=0, seed=0)


def test_synthetic_store_fixture(synthetic_store: ModelStoreDir) -> None:
    assert len(synthetic_store.model_ids) == 6
    assert len({i.split("/")[0] for i in synthetic_store.model_ids}) == 3
    for model_id in synthetic_store.model_ids:
        size = (synthetic_store.root / model_id / "model.onnx").stat().st_size
        assert 900_000 < size < 2_100_000


def test_bad_artifacts_fail_to_load_and_the_valid_one_loads(
    bad_artifacts_store: BadArtifactsStore,
) -> None:
    root = bad_artifacts_store.root
    _session(root / bad_artifacts_store.valid / "model.onnx")
    for broken in (bad_artifacts_store.truncated, bad_artifacts_store.garbage):
        with pytest.raises(Exception, match=r"(?i)protobuf|pars|load|invalid"):
            _session(root / broken / "model.onnx")
    missing = root / bad_artifacts_store.missing_model_file
    assert (missing / "model.json").is_file()
    assert not (missing / "model.onnx").exists()
