"""What bad input gets, on the real server over loopback: a clear 4xx/5xx, and serving goes on."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from fixtures.oip import infer, write_model
from fixtures.server import ThreadServer, free_port


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_model(root / "acme" / "good", weight_floats=256, seed=1)
    write_model(root / "acme" / "later", weight_floats=256, seed=2)
    (root / "acme" / "corrupt").mkdir(parents=True)
    (root / "acme" / "corrupt" / "model.onnx").write_bytes(b"\x08\x07 this is not protobuf")
    return root


@pytest.fixture
def server(store: Path, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    return start_server(store, failed_load_ttl_s=0.5, max_body=64 * 1024)


def test_unknown_model_is_404(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = infer(client, "acme/nope")
    assert response.status_code == 404
    assert "acme/nope" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "json"),
        (b'{"inputs": [{"name": "wrong", "datatype": "FP32", "shape": [1, 16], "data": '
         b'[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}', "wrong"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": '
         b"[1, 2, 3]}]}", "input"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [1]}]}',
         "input"),
        (b'{"inputs": [{"name": "input", "datatype": "NOPE", "shape": [1], "data": [1]}]}',
         "NOPE"),
    ],
)  # fmt: skip
def test_bad_request_bodies_are_400_naming_the_problem(
    server: ThreadServer, body: bytes, fragment: str
) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/v2/models/acme/good/infer", content=body)
        assert response.status_code == 400, response.text
        assert fragment.lower() in response.json()["error"].lower()
        assert infer(client, "acme/good").status_code == 200  # still serving


def test_body_over_limit_is_413(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/v2/models/acme/good/infer", content=b"x" * (65 * 1024))
        assert response.status_code == 413
        assert infer(client, "acme/good").status_code == 200


@pytest.mark.parametrize(
    "raw_path",
    ["/v2/models/acme/..%2F..%2Fetc/infer", "/v2/models/acme/%2e%2e/infer",
     "/v2/models/acme//good/infer", "/v2/models/acme/g%00ood/infer",
     "/v2/models/%2Fetc%2Fpasswd/infer"],
)  # fmt: skip
def test_unsafe_model_ids_are_refused_before_the_store(server: ThreadServer, raw_path: str) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = client.post(httpx.URL(server.url + raw_path), json={"inputs": []})
    assert response.status_code in (400, 404)
    assert "error" in response.json()


def test_sagemaker_target_model_with_traversal_is_400(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        response = client.post(
            "/invocations",
            headers={"X-Amzn-SageMaker-Target-Model": "../acme/good", "Content-Type": "text/csv"},
            content=b"1,2",
        )
    assert response.status_code == 400


def test_corrupt_artifact_fails_every_waiter_then_is_retried(
    server: ThreadServer, store: Path
) -> None:
    with httpx.Client(base_url=server.url) as client, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: infer(client, "acme/corrupt"), range(6)))
        assert {r.status_code for r in responses} == {500}
        assert all("not a loadable ONNX model" in r.json()["error"] for r in responses)
        assert all(str(store) not in r.text for r in responses)  # no host paths leak
        assert infer(client, "acme/good").status_code == 200
        # Fix the artifact in the store: once the failure memory expires, a call retries.
        shutil.rmtree(store / "acme" / "corrupt")
        write_model(store / "acme" / "corrupt", weight_floats=256, seed=3)
        deadline = time.monotonic() + 10
        while infer(client, "acme/corrupt").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert infer(client, "acme/corrupt").status_code == 200


def test_unreachable_s3_store_is_503_with_cause(
    tmp_path: Path, start_server: Callable[..., ThreadServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A loopback port nothing listens on: connection refused, quickly, and no traffic leaves.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-never-shown")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Built as an app (Ray replicas, tests): it runs, not ready, until the store comes back.
    server = start_server(
        "s3://nowhere/models", probe="/v2/health/live", store_retry_deadline_s=1.0
    )
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v2/health/ready").status_code == 503
        response = infer(client, "acme/good")
    assert response.status_code == 503
    assert "test-secret-never-shown" not in response.text
    assert response.json()["error"]


def test_cache_header_says_miss_then_hit(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        first = infer(client, "acme/later")
        second = infer(client, "acme/later")
        sagemaker = client.post(
            "/invocations",
            headers={"X-Amzn-SageMaker-Target-Model": "acme/later", "Content-Type": "text/csv"},
            content=b",".join([b"0.5"] * 16),
        )
    assert first.headers["X-Tenantserve-Cache"] == "miss"
    assert second.headers["X-Tenantserve-Cache"] == "hit"
    assert sagemaker.status_code == 200, sagemaker.text
    assert sagemaker.headers["X-Tenantserve-Cache"] == "hit"
