"""Tenant isolation on the real server: keys and boto3 SigV4, quotas, deadlines, disconnects."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from fixtures.clients import sagemaker_runtime
from fixtures.models import ModelStoreDir, heavy_model, make_model, slow_load_model
from fixtures.polling import until
from fixtures.server import ThreadServer

ACME_KEY = "acme-invoke-key-000001"
OPS_KEY = "ops-manage-key-0000001"
AWS_ID, AWS_SECRET = "AKIATENANT000", "tenant-000-secret-access-key"
HEAVY = "slow/heavy"
LIGHT = "quick/light"
HEAVY_ROWS = 2048  # about 5 s of one core: long enough to act while it runs
SLOW_LOAD = "storm/slow-load"  # about 1 s to load: holds the one load slot during a storm


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-store")
    heavy_model(root / HEAVY)
    make_model(root / LIGHT, size_bytes=100_000, seed=3)
    for i in range(24):
        make_model(root / f"storm/m{i:02d}", size_bytes=20_000, seed=i)
    slow_load_model(root / SLOW_LOAD)
    return root


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[[keys]]\nname = "acme"\nkey = "{ACME_KEY}"\nscopes = ["tenant-000/*"]\n\n'
        f'[[keys]]\nname = "ops"\nkey = "{OPS_KEY}"\nscopes = ["*"]\nroles = ["manage"]\n\n'
        f'[[keys]]\nname = "boto"\naws_access_key_id = "{AWS_ID}"\n'
        f'aws_secret_access_key = "{AWS_SECRET}"\nscopes = ["tenant-000/*"]\n'
    )
    return path


def _body(rows: int) -> bytes:
    data = np.linspace(-1, 1, rows * 16, dtype=np.float32).round(3).tolist()
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.fixture
def sagemaker() -> Iterator[Callable[..., Any]]:
    """Factory of boto3 sagemaker-runtime clients, closed after the test."""
    clients: list[Any] = []

    def make(url: str, key_id: str = AWS_ID, secret: str = AWS_SECRET) -> Any:
        client = sagemaker_runtime(url, key_id=key_id, secret=secret, region="eu-west-1")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(url: str, name: str, **labels: str) -> float:
    return _scrape(url).get((name, tuple(sorted(labels.items()))), 0.0)


@contextlib.contextmanager
def _open_request(url: str, path: str, body: bytes) -> Iterator[socket.socket]:
    """Send a request on a raw socket and keep it open (closing it is the test's move)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    try:
        yield sock
    finally:
        sock.close()


def test_boto3_signs_with_a_key_and_stays_in_its_scope(
    start_server: Callable[..., ThreadServer],
    synthetic_store: ModelStoreDir,
    keys_file: Path,
    caplog: pytest.LogCaptureFixture,
    sagemaker: Callable[..., Any],
) -> None:
    server = start_server(synthetic_store.url, api_keys=keys_file)
    _sagemaker = sagemaker
    body = json.dumps({"instances": np.ones((2, 16)).tolist()})
    mine, theirs = "tenant-000/model-0000", "tenant-001/model-0001"
    response = _sagemaker(server.url).invoke_endpoint(
        EndpointName="local", TargetModel=mine, ContentType="application/json", Body=body
    )
    assert len(json.loads(response["Body"].read())["predictions"]) == 2
    with pytest.raises(ClientError) as forbidden:
        _sagemaker(server.url).invoke_endpoint(
            EndpointName="local", TargetModel=theirs, ContentType="application/json", Body=body
        )
    assert forbidden.value.response["Error"]["Code"] == "AccessDeniedException"
    assert forbidden.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as unsigned:
        _sagemaker(server.url, secret="not-the-secret-at-all").invoke_endpoint(
            EndpointName="local", TargetModel=mine, ContentType="application/json", Body=body
        )
    assert unsigned.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401

    # Or keep dummy AWS credentials and send the API key as a header from an event hook.
    client = _sagemaker(server.url, key_id="unused", secret="unused-unused-unused")

    def add_key(request: Any, **_: Any) -> None:
        request.headers["X-Api-Key"] = ACME_KEY

    client.meta.events.register("before-sign.sagemaker-runtime.*", add_key)
    hooked = client.invoke_endpoint(
        EndpointName="local", TargetModel=mine, ContentType="application/json", Body=body
    )
    assert len(json.loads(hooked["Body"].read())["predictions"]) == 2
    assert ACME_KEY not in caplog.text
    assert AWS_SECRET not in caplog.text


def test_every_route_refuses_other_tenants_and_missing_keys(
    start_server: Callable[..., ThreadServer], synthetic_store: ModelStoreDir, keys_file: Path
) -> None:
    server = start_server(synthetic_store.url, api_keys=keys_file)
    acme, ops = {"X-Api-Key": ACME_KEY}, {"Authorization": f"Bearer {OPS_KEY}"}
    body = _body(1)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get("/ping").status_code == 200
        assert http.post("/v2/models/tenant-000/model-0000/infer", content=body).status_code == 401
        ok = http.post("/v2/models/tenant-000/model-0000/infer", content=body, headers=acme)
        assert ok.status_code == 200
        for spelling in ("tenant-001/model-0001", "tenant-001%2Fmodel-0001", "tenant-001/nope"):
            path = f"/v2/models/{spelling}/infer"
            assert http.post(path, content=body, headers=acme).status_code == 403
        # Management needs the manage role, on OIP and on the SageMaker container API.
        load = "/v2/repository/models/{}/load"
        assert http.post(load.format("tenant-000/model-0000"), headers=acme).status_code == 403
        assert http.post(load.format("tenant-001/model-0001"), headers=ops).status_code == 200
        assert http.delete("/models/tenant-001/model-0001", headers=acme).status_code == 403
        assert http.delete("/models/tenant-001/model-0001", headers=ops).status_code == 200
        assert http.get("/models", headers=acme).status_code == 403


def test_public_bind_without_keys_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tenantserve", "serve", "--store", str(tmp_path),
         "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--api-keys" in result.stderr
    assert "--insecure-no-auth" in result.stderr


def test_loopback_without_keys_warns_at_start(
    start_server: Callable[..., ThreadServer],
    synthetic_store: ModelStoreDir,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="tenantserve"):
        start_server(synthetic_store.url)
    assert "authentication is OFF" in caplog.text


def test_tenant_over_its_rate_gets_429_and_others_do_not(
    start_server: Callable[..., ThreadServer],
    synthetic_store: ModelStoreDir,
    tmp_path: Path,
    sagemaker: Callable[..., Any],
) -> None:
    limits = tmp_path / "limits.toml"
    limits.write_text("[tenants.tenant-000]\nrate_per_s = 0.01\nburst = 1\n")
    server = start_server(synthetic_store.url, tenant_limits=limits)
    body = _body(1)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v2/models/tenant-000/model-0000/infer", content=body).status_code == 200
        over = http.post("/v2/models/tenant-000/model-0000/infer", content=body)
        assert over.status_code == 429
        assert int(over.headers["Retry-After"]) >= 1
        for _ in range(3):
            other = http.post("/v2/models/tenant-001/model-0001/infer", content=body)
            assert other.status_code == 200
    with pytest.raises(ClientError) as throttled:
        sagemaker(server.url).invoke_endpoint(
            EndpointName="local", TargetModel="tenant-000/model-0000",
            ContentType="application/json", Body=json.dumps({"instances": [[0.0] * 16]}),
        )  # fmt: skip
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert _value(server.url, "tenantserve_rejected_requests_total",
                  reason="tenant_rate", tenant="tenant-000") == 2  # fmt: skip


def test_deadline_passed_in_the_predict_queue_is_dropped_and_counted(
    start_server: Callable[..., ThreadServer], slow_store: Path
) -> None:
    server = start_server(slow_store, threads=1, queue_timeout_s=0.5, preload=(HEAVY, LIGHT))
    light = f"/v2/models/{LIGHT}/infer"
    assert httpx.post(server.url + light, content=_body(1), timeout=30).status_code == 200
    with _open_request(server.url, f"/v2/models/{HEAVY}/infer", _body(HEAVY_ROWS)):
        until(lambda: _value(server.url, "tenantserve_requests_in_flight") == 1)
        late = httpx.post(server.url + light, content=_body(1), timeout=30)
        assert late.status_code == 503
        assert int(late.headers["Retry-After"]) >= 1
        assert _value(server.url, "tenantserve_rejected_requests_total",
                      reason="timeout", tenant="quick") == 1  # fmt: skip


def test_a_client_that_disconnects_frees_its_slot_and_queue_place(
    start_server: Callable[..., ThreadServer], slow_store: Path
) -> None:
    server = start_server(slow_store, threads=1, queue_timeout_s=60, preload=(HEAVY, LIGHT))
    light = f"/v2/models/{LIGHT}/infer"
    assert httpx.post(server.url + light, content=_body(1), timeout=30).status_code == 200
    in_flight = "tenantserve_requests_in_flight"
    with _open_request(server.url, f"/v2/models/{HEAVY}/infer", _body(HEAVY_ROWS)):
        until(lambda: _value(server.url, in_flight) == 1)
        with _open_request(server.url, light, _body(1)):
            until(lambda: _value(server.url, "tenantserve_queue_depth", queue="predict") == 1)
            assert _value(server.url, in_flight) == 2
        # The light request left while the heavy one still runs: its slot and place are free.
        until(lambda: _value(server.url, "tenantserve_queue_depth", queue="predict") == 0)
        assert _value(server.url, in_flight) == 1
        assert _value(server.url, "tenantserve_invocations_total", protocol="oip", code="200") == 1
    until(lambda: _value(server.url, in_flight) == 0)
    closed = _value(server.url, "tenantserve_invocations_total", protocol="oip", code="499")
    assert closed == 2


def test_a_full_admission_queue_answers_503_at_once(
    start_server: Callable[..., ThreadServer], slow_store: Path
) -> None:
    server = start_server(
        slow_store, threads=1, max_in_flight=1, queue_timeout_s=60, preload=(HEAVY, LIGHT)
    )
    light = f"/v2/models/{LIGHT}/infer"
    assert httpx.post(server.url + light, content=_body(1), timeout=30).status_code == 200
    with contextlib.ExitStack() as held:
        heavy = _open_request(server.url, f"/v2/models/{HEAVY}/infer", _body(HEAVY_ROWS))
        held.enter_context(heavy)
        until(lambda: _value(server.url, "tenantserve_requests_in_flight") == 1)
        for _ in range(4):  # the queue holds 4 times max_in_flight
            held.enter_context(_open_request(server.url, light, _body(1)))
        until(lambda: _value(server.url, "tenantserve_queue_depth", queue="admission") == 4)
        full = httpx.post(server.url + light, content=_body(1), timeout=30)
        assert full.status_code == 503
        assert int(full.headers["Retry-After"]) >= 1
        assert _value(server.url, "tenantserve_rejected_requests_total",
                      reason="queue_full", tenant="quick") == 1  # fmt: skip


def test_a_storm_of_first_calls_is_answered_fast_or_served(
    start_server: Callable[..., ThreadServer], slow_store: Path
) -> None:
    server = start_server(slow_store, max_concurrent_loads=1, max_queued_loads=0)
    ids = [f"storm/m{i:02d}" for i in range(24)]

    def oip(model_id: str) -> httpx.Response:
        return httpx.post(f"{server.url}/v2/models/{model_id}/infer", content=_body(1), timeout=60)

    def sagemaker(model_id: str) -> httpx.Response:
        headers = {"X-Amzn-SageMaker-Target-Model": model_id, "Content-Type": "text/csv"}
        return httpx.post(f"{server.url}/invocations", content="0," * 15 + "0",
                          headers=headers, timeout=60)  # fmt: skip

    with ThreadPoolExecutor(25) as pool:
        # One load slot, no queue: while a slow load holds the slot, the storm overflows, and
        # each first call must be refused at once rather than wait.
        holder = pool.submit(oip, SLOW_LOAD)
        until(lambda: _value(server.url, "tenantserve_requests_in_flight") == 1)
        calls = [pool.submit(oip, m) for m in ids[:12]]
        calls += [pool.submit(sagemaker, m) for m in ids[12:]]
        answers = [call.result() for call in calls]
        assert holder.result().status_code == 200, holder.result().text
    for answer in answers[:12]:
        assert answer.status_code in (200, 503), answer.text
    for answer in answers[12:]:
        assert answer.status_code in (200, 429), answer.text
    refused = [answer for answer in answers if answer.status_code != 200]
    assert {answer.status_code for answer in refused} == {503, 429}, [a.text for a in answers]
    for answer in refused:
        assert int(answer.headers["Retry-After"]) >= 1
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    for model_id in ids:  # served once the storm passed
        until(lambda m=model_id: oip(m).status_code == 200)  # type: ignore[misc]
