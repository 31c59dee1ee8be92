"""Native files load as the ONNX converted from them, converted once and kept in the disk tier."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pytest

from tenantserve.errors import LoadFailed
from tenantserve.runtimes import default_runtimes
from tenantserve.runtimes.native import NativeArtifacts
from tenantserve.store import DiskCache
from tenantserve.store.manifest import read_manifest
from tenantserve.types import ModelManifest


def _lightgbm(folder: Path) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 4)).astype(np.float32)
    params = {"objective": "regression", "verbose": -1, "num_threads": 1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, x[:, 0] * 3), 4)
    booster.save_model(folder / "lightgbm.txt")
    return np.asarray(booster.predict(x[:5]), dtype=np.float32)


def test_an_onnx_manifest_passes_through(tmp_path: Path) -> None:
    native = NativeArtifacts(None)
    manifest = ModelManifest()
    assert native.resolve(tmp_path, manifest) == (tmp_path, manifest)


def test_a_native_model_loads_converted_and_predicts_as_its_framework(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    expected = _lightgbm(artifact)
    manifest = read_manifest(artifact)
    assert manifest.model_file == "lightgbm.txt"
    runtime = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))["onnx"]
    prepared = runtime.prepare(artifact, manifest)
    assert prepared.note == ""  # the converted file loads the fast way (ORT format)
    model = runtime.load(artifact, manifest)
    assert [s.name for s in model.inputs] == ["input"]
    assert [s.name for s in model.outputs] == ["predictions"]
    rows = np.random.default_rng(1).normal(size=(80, 4)).astype(np.float32)[:5]
    got = model.predict({"input": rows})["predictions"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    model.close()


def test_a_conversion_is_made_once_per_source_and_sample(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    _lightgbm(artifact)
    disk = DiskCache(tmp_path / "disk", max_bytes=1 << 30)
    manifest = read_manifest(artifact)
    first, converted = NativeArtifacts(disk).resolve(artifact, manifest)
    assert converted.model_file == "model.onnx"
    assert (first / "conversion.json").is_file()
    made = (first / "model.onnx").stat().st_mtime_ns
    # Another runtime on the same disk tier (a restart) takes the kept file.
    again, _ = NativeArtifacts(disk).resolve(artifact, manifest)
    assert again == first
    assert (again / "model.onnx").stat().st_mtime_ns == made
    # A sample added to the artifact proves it anew: a new conversion.
    np.save(artifact / "sample.npy", np.zeros((3, 4)))
    proved, _ = NativeArtifacts(disk).resolve(artifact, manifest)
    assert proved != first
    assert '"proved_on": "sample.npy"' in (proved / "conversion.json").read_text()


def test_without_a_disk_tier_conversions_live_in_a_folder_removed_with_the_runtime(
    tmp_path: Path,
) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    _lightgbm(artifact)
    native = NativeArtifacts(None)
    converted, manifest = native.resolve(artifact, read_manifest(artifact))
    assert (converted / manifest.model_file).is_file()
    scratch = converted.parent
    assert scratch.name.startswith("tenantserve-converted-")
    del native
    gc.collect()
    assert not scratch.exists()  # no run leaves its conversions behind in the temp folder


def test_the_framework_is_imported_in_a_child_never_in_the_server(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    _lightgbm(artifact)
    script = (
        "import sys; from pathlib import Path\n"
        "from tenantserve.runtimes.native import NativeArtifacts\n"
        "from tenantserve.store.manifest import read_manifest\n"
        f"folder = Path({str(artifact)!r})\n"
        "native = NativeArtifacts(None)\n"
        "out, _ = native.resolve(folder, read_manifest(folder))\n"
        "print((out / 'model.onnx').is_file(), 'lightgbm' in sys.modules, 'onnx' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert done.stdout.decode().split() == ["True", "False", "False"]


def test_a_refused_conversion_comes_back_from_the_child_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "lightgbm.txt").write_text("not a model\n")
    with pytest.raises(LoadFailed, match=r"^lightgbm.txt is not a LightGBM model"):
        NativeArtifacts(None).resolve(tmp_path, read_manifest(tmp_path))
