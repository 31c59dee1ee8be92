"""The whole server on an ``s3://`` store: SeaweedFS on loopback, real uploads, real requests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from fixtures.models import ModelStoreDir
from fixtures.oip import infer, scrape, write_model
from fixtures.s3 import S3Server
from fixtures.server import ThreadServer

pytestmark = pytest.mark.s3


def _tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder / "model.onnx", arcname="model.onnx")
    return buffer.getvalue()


def test_models_load_lazily_from_s3_and_answer_like_local_onnxruntime(
    s3_env: S3Server,
    synthetic_store: ModelStoreDir,
    tmp_path: Path,
    start_server: Callable[..., ThreadServer],
) -> None:
    bucket = s3_env.create_bucket()
    s3_env.upload_tree(synthetic_store.root, bucket, "fleet")
    packed = tmp_path / "packed"
    write_model(packed, weight_floats=1024, seed=42)
    s3_env.put_bytes(bucket, "fleet/packed/model.tar.gz", _tar_gz(packed))
    # A budget that holds about two of the 1-2 MB models, so the stream evicts and reloads.
    server = start_server(f"s3://{bucket}/fleet", memory_budget=6 * 1024 * 1024)
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    with httpx.Client(base_url=server.url) as client:
        for _ in range(2):
            for model_id in synthetic_store.model_ids:
                body = {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [1, 16],
                         "data": x.ravel().tolist()}
                    ]
                }  # fmt: skip
                response = client.post(f"/v2/models/{model_id}/infer", json=body)
                assert response.status_code == 200, response.text
                served = np.array(response.json()["outputs"][0]["data"], dtype=np.float32)
                local = ort.InferenceSession(str(synthetic_store.root / model_id / "model.onnx"))
                expected = local.run(None, {"input": x})[0].ravel()
                # The server runs the ORT-format copy (optimised at the extended level): equal
                # to the plain .onnx session within 1e-5, not bit for bit.
                np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
        assert infer(client, "packed/model.tar.gz").status_code == 200
        assert infer(client, "missing/model").status_code == 404
        metrics = scrape(client)
    assert metrics["tenantserve_model_evictions_total"] > 0
    assert metrics["tenantserve_memory_used_bytes"] <= 6 * 1024 * 1024
    assert metrics["tenantserve_model_downloading_seconds_count"] >= len(synthetic_store.model_ids)
