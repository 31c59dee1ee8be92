"""Shared bases: one session per digest, heads per model, the same answers as one graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fixtures.shared_base import base_bytes, expected, write_tenant
from tenantserve.errors import InvalidInput, LoadFailed
from tenantserve.runtimes import default_runtimes, runtime_for
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.store.manifest import checked_manifest
from tenantserve.types import ModelManifest, SharedBase


def test_models_on_one_base_share_one_session_and_answer_as_one_graph(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    runtimes = default_runtimes()
    heads, models = [], []
    for i in range(3):
        folder = tmp_path / f"t{i}"
        heads.append(write_tenant(folder, i, base))
        manifest = checked_manifest(folder, f"model t{i}")
        assert manifest.base == SharedBase("encoder.onnx", hashlib.sha256(base).hexdigest())
        models.append(runtime_for(runtimes, manifest).load(folder, manifest))
    runtime = runtimes["onnx"]
    usage = runtime.shared_usage()
    assert usage.held_bytes > 0
    assert usage.logical_bytes == 3 * usage.held_bytes
    assert [s.name for s in models[0].inputs] == ["x", "bias"]
    x = np.random.default_rng(9).standard_normal((4, 8)).astype(np.float32)
    bias = np.ones((4, 3), dtype=np.float32)
    for model, head_v in zip(models, heads, strict=True):
        np.testing.assert_allclose(
            model.predict({"x": x, "bias": bias})["y"],
            expected(x, head_v, bias),
            rtol=1e-5,
            atol=1e-5,
        )
    models[0].close()
    models[0].close()  # closing twice releases once
    assert runtime.shared_usage().logical_bytes == 2 * usage.held_bytes
    np.testing.assert_allclose(
        models[1].predict({"x": x, "bias": bias})["y"],
        expected(x, heads[1], bias),
        rtol=1e-5,
        atol=1e-5,
    )
    for model in models[1:]:
        model.close()
    assert runtime.shared_usage().held_bytes == 0


def test_a_base_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    folder = tmp_path / "liar"
    write_tenant(folder, 1, base)
    (folder / "encoder.onnx").write_bytes(base[:-1] + b"\x00")
    manifest = checked_manifest(folder, "model liar")
    runtime = OnnxRuntime()
    with pytest.raises(LoadFailed, match="does not match its declared sha256"):
        runtime.load(folder, manifest)
    assert runtime.shared_usage().held_bytes == 0


def test_inputs_are_checked_across_base_and_head(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    write_tenant(tmp_path / "t", 1, base)
    manifest = checked_manifest(tmp_path / "t", "model t")
    model = OnnxRuntime().load(tmp_path / "t", manifest)
    x = np.zeros((1, 8), np.float32)
    with pytest.raises(InvalidInput, match="unexpected input 'z'"):
        model.predict({"x": x, "bias": np.zeros((1, 3), np.float32), "z": x})
    with pytest.raises(InvalidInput, match="missing input 'bias'"):
        model.predict({"x": x})


def test_missing_base_file_is_a_load_failure(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    write_tenant(tmp_path / "t", 1, base)
    (tmp_path / "t" / "encoder.onnx").unlink()
    with pytest.raises(LoadFailed, match="base model file that is missing"):
        checked_manifest(tmp_path / "t", "model t")


def test_shared_estimate_counts_a_base_only_until_it_is_held(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    write_tenant(tmp_path / "a", 1, base)
    write_tenant(tmp_path / "b", 2, base)
    runtime = OnnxRuntime()
    manifest = checked_manifest(tmp_path / "a", "model a")
    assert runtime.shared_estimate(manifest, tmp_path / "a") >= len(base)
    model = runtime.load(tmp_path / "a", manifest)
    assert runtime.shared_estimate(checked_manifest(tmp_path / "b", "b"), tmp_path / "b") == 0
    assert runtime.shared_estimate(ModelManifest(), tmp_path / "a") == 0
    model.close()
