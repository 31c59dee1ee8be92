"""Grouped runs: heads of different tenants on one base answer one batch as each alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fixtures.shared_base import base_bytes, expected, write_tenant
from tenantserve.runtimes import default_runtimes, runtime_for
from tenantserve.runtimes.grouped import Grouped, group_key
from tenantserve.scheduling.batch_run import Request, compute
from tenantserve.store.manifest import checked_manifest


def test_heads_on_one_base_share_a_group_key_and_answer_a_group_as_alone(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    runtimes = default_runtimes()
    heads, models = [], []
    for i in range(3):
        folder = tmp_path / f"t{i}"
        heads.append(write_tenant(folder, i, base))
        manifest = checked_manifest(folder, f"model t{i}")
        models.append(runtime_for(runtimes, manifest).load(folder, manifest))
    keys = {group_key(model) for model in models}
    assert len(keys) == 1
    assert None not in keys
    rng = np.random.default_rng(3)
    requests = []
    for i, rows in enumerate((2, 1, 3, 1)):  # tenant 0 twice, apart: its rows run together
        model = models[i % 3]
        x = rng.standard_normal((rows, 8)).astype(np.float32)
        bias = rng.standard_normal((rows, 3)).astype(np.float32)
        requests.append(Request(model, {"x": x, "bias": bias}, rows))
    answers = compute(requests)
    for i, (request, answer) in enumerate(zip(requests, answers, strict=True)):
        assert isinstance(answer, dict)
        t = request.tensors
        alone = request.model.predict(t)["y"]
        np.testing.assert_allclose(answer["y"], alone, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            answer["y"], expected(t["x"], heads[i % 3], t["bias"]), rtol=1e-5, atol=1e-5
        )
    assert isinstance(models[0], Grouped)
    for model in models:
        model.close()


def test_a_plain_model_has_no_group_key(tmp_path: Path) -> None:
    from fixtures.models import make_model

    folder = make_model(tmp_path / "plain", size_bytes=10_000)
    manifest = checked_manifest(folder, "plain")
    model = runtime_for(default_runtimes(), manifest).load(folder, manifest)
    assert group_key(model) is None
    model.close()
