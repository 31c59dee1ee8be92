"""A faulty S3 store under the real server (RELIABILITY 14, 16-18): retries, clear errors, recovery.

The server reads ``s3://`` through :mod:`fixtures.faulty_s3`, a proxy in front of SeaweedFS that
injects one kind of fault at a time into the object GETs of one model. Each test checks what
the caller sees, that a resident model keeps serving meanwhile, and how long the model takes to
come back once the fault clears (printed, for the record; asserted only against loose bounds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config

from fixtures.faulty_s3 import FaultyS3
from fixtures.oip import infer, scrape, write_model
from fixtures.server import ThreadServer

pytestmark = pytest.mark.s3

RESIDENT = "acme/resident"
FLAKY = "acme/flaky"
PREFIX = "models"
DEADLINE_S = 1.5
READ_TIMEOUT_S = 1.0
FAILED_LOAD_TTL_S = 0.5
CALLERS = 4
MIB = 1 << 20
# A caller's whole wait on a failing load: the retry deadline, one attempt in progress at it
# (two reads cut by the read timeout), and slack for a loaded 2-core machine.
FAIL_BOUND_S = 30.0
RECOVERY_BOUND_S = 20.0


@dataclass(frozen=True)
class Bucket:
    name: str
    onnx: dict[str, bytes]  # model id -> the model.onnx bytes in the store

    def object_target(self, model_id: str, name: str = "model.onnx") -> str:
        return f"/{self.name}/{PREFIX}/{model_id}/{name}"


def _model_bytes(tmp_path: Path, name: str, *, seed: int, weight_floats: int) -> bytes:
    folder = tmp_path / "src" / name
    write_model(folder, weight_floats=weight_floats, seed=seed)
    return (folder / "model.onnx").read_bytes()


@pytest.fixture
def bucket(faulty_s3: FaultyS3, tmp_path: Path) -> Bucket:
    """A resident-to-be model and a 1 MiB model the faults hit, uploaded straight to SeaweedFS."""
    s3 = faulty_s3.server
    name = s3.create_bucket()
    onnx = {
        RESIDENT: _model_bytes(tmp_path, "resident", seed=1, weight_floats=256),
        FLAKY: _model_bytes(tmp_path, "flaky", seed=2, weight_floats=MIB // 4),
    }
    for model_id, data in onnx.items():
        s3.put_bytes(name, f"{PREFIX}/{model_id}/model.onnx", data)
    return Bucket(name, onnx)


@pytest.fixture
def serve(
    faulty_s3: FaultyS3, bucket: Bucket, start_server: Callable[..., ThreadServer], tmp_path: Path
) -> Iterator[Callable[..., ThreadServer]]:
    """Start the server on the proxied bucket with short retry settings; load RESIDENT first."""

    def start(**overrides: object) -> ThreadServer:
        settings: dict[str, object] = {
            "store_retry_deadline_s": DEADLINE_S,
            "store_read_timeout_s": READ_TIMEOUT_S,
            "failed_load_ttl_s": FAILED_LOAD_TTL_S,
            "cache_dir": tmp_path / "disk-cache",
            **overrides,
        }
        server = start_server(f"s3://{bucket.name}/{PREFIX}", **settings)
        with httpx.Client(base_url=server.url) as client:
            assert infer(client, RESIDENT).status_code == 200
        return server

    yield start
    faulty_s3.clear()  # a stalled or throttled body must not hold the server's shutdown


def _cached_copies(cache_dir: Path, name: str = "model.onnx") -> list[bytes]:
    """The model files the disk cache holds as good copies (work in progress excluded)."""
    if not cache_dir.exists():
        return []
    return [
        path.read_bytes()
        for path in sorted(cache_dir.rglob(name))
        if ".tmp" not in path.relative_to(cache_dir).parts
    ]


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _recover(client: httpx.Client, model_id: str, label: str) -> float:
    """Seconds from now until ``model_id`` answers 200 (polling as a client would)."""
    started = time.monotonic()
    while True:
        response = infer(client, model_id)
        if response.status_code == 200:
            recovery_s = time.monotonic() - started
            print(f"\nRECOVERY {label}: {recovery_s:.2f} s after the fault cleared")
            assert recovery_s < RECOVERY_BOUND_S
            return recovery_s
        assert response.status_code == 503, response.text
        assert time.monotonic() - started < RECOVERY_BOUND_S, "model never came back"
        time.sleep(0.1)


def _assert_clean(response: httpx.Response, bucket: Bucket, faulty_s3: FaultyS3) -> None:
    """No secret, bucket name, endpoint or host path in what the caller sees."""
    text = response.text
    for leaked in (
        faulty_s3.server.secret_key,
        faulty_s3.server.access_key,
        bucket.name,
        faulty_s3.endpoint_url,
        "127.0.0.1",
        "/tmp",
    ):
        assert leaked not in text


# -- transient faults: retried, the load succeeds, and what is kept is the store's bytes ------


def test_each_transient_fault_is_retried_and_the_copy_is_whole(
    faulty_s3: FaultyS3, bucket: Bucket, serve: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    # One of every fault, in a row, on the same object: each must cost a retry, not the load.
    target = bucket.object_target(FLAKY)
    faulty_s3.fail(500, "InternalError", times=2, match=target)
    faulty_s3.slow_down(times=1, match=target)
    faulty_s3.fail(503, "ServiceUnavailable", times=1, match=target)
    faulty_s3.reset(after_bytes=64 * 1024, times=1, match=target)
    faulty_s3.stall(30, after_bytes=64 * 1024, times=1, match=target)
    faulty_s3.corrupt(times=1, match=target)
    server = serve(store_retry_deadline_s=30.0)
    with httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        response = infer(client, FLAKY)
        took_s = time.monotonic() - started
    print(f"\nLOAD THROUGH 7 FAULTS: {took_s:.2f} s")
    assert response.status_code == 200, response.text
    seen = [r.fault for r in faulty_s3.requests(method="GET", match=target)]
    assert [f for f in seen if f is not None] == [
        "status", "status", "status", "status", "reset", "stall", "corrupt"
    ]  # fmt: skip
    assert seen[-1] is None  # the copy kept is the one that passed through untouched
    copies = _cached_copies(tmp_path / "disk-cache")
    assert sorted(copies) == sorted([bucket.onnx[RESIDENT], bucket.onnx[FLAKY]])


# -- persistent faults: the load fails after the deadline, for its callers only ---------------


@dataclass(frozen=True)
class Fault:
    arm: Callable[[FaultyS3, str], None]
    cause: str  # what the error must name


FAULTS = {
    "500": Fault(
        lambda p, m: p.fail(500, "InternalError", match=m), "kept failing (InternalError)"
    ),
    "503": Fault(
        lambda p, m: p.fail(503, "ServiceUnavailable", match=m),
        "kept failing (ServiceUnavailable)",
    ),
    "slowdown": Fault(lambda p, m: p.slow_down(match=m), "kept failing (SlowDown)"),
    "reset": Fault(lambda p, m: p.reset(after_bytes=64 * 1024, match=m), "could not be reached"),
    "stall": Fault(
        lambda p, m: p.stall(60, after_bytes=64 * 1024, match=m), "could not be reached (timed out)"
    ),
    "corrupt": Fault(lambda p, m: p.corrupt(match=m), "sent a copy that failed its check"),
}


@pytest.mark.parametrize("kind", list(FAULTS))
def test_persistent_fault_fails_that_load_only_then_recovers(
    kind: str,
    faulty_s3: FaultyS3,
    bucket: Bucket,
    serve: Callable[..., ThreadServer],
    tmp_path: Path,
) -> None:
    server = serve()
    fault = FAULTS[kind]
    target = bucket.object_target(FLAKY)
    fault.arm(faulty_s3, target)
    with httpx.Client(base_url=server.url) as client, ThreadPoolExecutor(CALLERS) as pool:
        started = time.monotonic()
        calls = [pool.submit(infer, client, FLAKY) for _ in range(CALLERS)]
        # While the load retries, the resident model answers as usual.
        _wait_for(lambda: faulty_s3.count(method="GET", match=target) > 0)
        assert infer(client, RESIDENT).status_code == 200
        responses = [call.result(timeout=FAIL_BOUND_S) for call in calls]
        failed_after_s = time.monotonic() - started
        assert infer(client, RESIDENT).status_code == 200
        assert failed_after_s < FAIL_BOUND_S
        # Every caller gets the same clear, retryable answer from the one shared load.
        assert {r.status_code for r in responses} == {503}
        assert len({r.text for r in responses}) == 1
        error = responses[0].json()["error"]
        print(f"\nFAILED {kind}: callers answered after {failed_after_s:.2f} s: {error}")
        assert FLAKY in error, error
        assert fault.cause in error, error
        assert all(r.headers["Retry-After"] == "1" for r in responses)
        _assert_clean(responses[0], bucket, faulty_s3)
        # Single flight: one load looked the model up once; its GETs were retried, with backoff.
        lookups = [
            r
            for r in faulty_s3.requests(method="HEAD")
            if r.target == f"/{bucket.name}/{PREFIX}/{FLAKY}"
        ]
        assert len(lookups) == 1
        gets = faulty_s3.count(method="GET", match=target)
        assert 2 <= gets <= 40, gets
        assert _cached_copies(tmp_path / "disk-cache") == [bucket.onnx[RESIDENT]]
        faulty_s3.clear()
        _recover(client, FLAKY, kind)
        copies = _cached_copies(tmp_path / "disk-cache")
        assert sorted(copies) == sorted([bucket.onnx[RESIDENT], bucket.onnx[FLAKY]])


def test_slow_download_is_not_cut_and_callers_are_told_to_retry(
    faulty_s3: FaultyS3, bucket: Bucket, serve: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    # 1 MiB at 512 KiB/s: about two seconds, longer than callers wait, but always moving.
    server = serve(load_wait_s=0.5)
    target = bucket.object_target(FLAKY)
    faulty_s3.throttle(512 * 1024, match=target)
    with httpx.Client(base_url=server.url) as client:
        first = infer(client, FLAKY)
        assert first.status_code == 503, first.text
        assert "still loading" in first.json()["error"]
        assert int(first.headers["Retry-After"]) >= 1
        assert infer(client, RESIDENT).status_code == 200
        _recover(client, FLAKY, "slow (512 KiB/s, never cleared)")
    # The slow body was read to its end once, not cut by the read timeout and started over.
    assert faulty_s3.count(method="GET", match=target) == 1
    assert bucket.onnx[FLAKY] in _cached_copies(tmp_path / "disk-cache")


# -- corrupt bodies (RELIABILITY 18) and checksums (14) ----------------------------------------


def _put_without_checksum(faulty_s3: FaultyS3, bucket: Bucket, key: str, data: bytes) -> None:
    # Without a stored CRC, GET answers carry no x-amz-checksum-* header for botocore to check:
    # then only the ETag (the MD5 of a single-part upload) can tell a corrupted body.
    s3 = faulty_s3.server
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
        config=Config(request_checksum_calculation="when_required"),
    )
    client.put_object(Bucket=bucket.name, Key=key, Body=data)


def test_corruption_without_a_stored_checksum_is_caught_by_the_etag(
    faulty_s3: FaultyS3, bucket: Bucket, serve: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    model_id = "acme/plain"
    data = bucket.onnx[FLAKY]
    _put_without_checksum(faulty_s3, bucket, f"{PREFIX}/{model_id}/model.onnx", data)
    server = serve()
    target = bucket.object_target(model_id)
    with httpx.Client(base_url=server.url) as client:
        faulty_s3.corrupt(match=target)
        response = infer(client, model_id)
        assert response.status_code == 503, response.text
        assert "MD5 differs from the ETag" in response.json()["error"]
        assert faulty_s3.count(method="GET", match=target) >= 2  # retried, then refused
        assert data not in _cached_copies(tmp_path / "disk-cache")
        assert len(_cached_copies(tmp_path / "disk-cache")) == 1  # RESIDENT only
        faulty_s3.clear()
        _recover(client, model_id, "corrupt body, no stored checksum")
    assert data in _cached_copies(tmp_path / "disk-cache")


def test_bad_checksum_on_a_ranged_get_never_reaches_the_disk(
    faulty_s3: FaultyS3, bucket: Bucket, serve: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    # The rclone quirk: a reset makes the client resume with a ranged GET, which comes back
    # with the whole object's checksum. The partial must be dropped and the object fetched whole.
    server = serve(store_retry_deadline_s=10.0)
    target = bucket.object_target(FLAKY)
    faulty_s3.reset(after_bytes=256 * 1024, times=1, match=target)
    faulty_s3.bad_ranged_checksum(match=target)
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, FLAKY).status_code == 200
    gets = faulty_s3.requests(method="GET", match=target)
    assert [r.fault for r in gets] == ["reset", "ranged_checksum", None]
    assert gets[1].range == "bytes=262144-"
    assert gets[2].range is None
    assert bucket.onnx[FLAKY] in _cached_copies(tmp_path / "disk-cache")


def test_checksum_mismatch_with_the_manifest_is_refused_and_remembered(
    faulty_s3: FaultyS3, bucket: Bucket, serve: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    model_id = "acme/tampered"
    s3 = faulty_s3.server
    data = bucket.onnx[RESIDENT]
    manifest = {"sha256": hashlib.sha256(data + b"other").hexdigest()}
    s3.put_bytes(bucket.name, f"{PREFIX}/{model_id}/model.onnx", data)
    s3.put_bytes(bucket.name, f"{PREFIX}/{model_id}/model.json", json.dumps(manifest).encode())
    server = serve(failed_load_ttl_s=60.0)
    target = bucket.object_target(model_id)
    with httpx.Client(base_url=server.url) as client:
        responses = [infer(client, model_id) for _ in range(3)]
        assert {r.status_code for r in responses} == {500}
        assert all("does not match the sha256" in r.json()["error"] for r in responses)
        _assert_clean(responses[0], bucket, faulty_s3)
        # Not a transient fault: fetched once, then answered from the failure memory.
        assert faulty_s3.count(method="GET", match=target) == 1
        assert scrape(client)["tenantserve_model_load_failures_total"] == 1
        assert infer(client, RESIDENT).status_code == 200
    assert len(_cached_copies(tmp_path / "disk-cache")) == 1  # RESIDENT only: nothing kept


# -- wrong credentials (RELIABILITY 17) --------------------------------------------------------


def test_wrong_credentials_are_a_clear_error_without_the_secret(
    faulty_s3: FaultyS3,
    bucket: Bucket,
    start_server: Callable[..., ThreadServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-secret-" + faulty_s3.server.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    caplog.set_level(logging.INFO)
    server = start_server(
        f"s3://{bucket.name}/{PREFIX}", probe="/v2/health/live",
        store_retry_deadline_s=DEADLINE_S, failed_load_ttl_s=0,
    )  # fmt: skip
    with httpx.Client(base_url=server.url) as client:
        response = infer(client, FLAKY)
        assert client.get("/v2/health/live").status_code == 200
        # The store's check at start failed too: not ready, and /v1/status says why.
        assert client.get("/v2/health/ready").status_code == 503
        problem = client.get("/v1/status").json()["store"]["problem"]
        assert "refused access" in problem
    assert response.status_code == 503
    error = response.json()["error"]
    # The first request for the model lists its folder (its versions): S3 names the cause.
    assert FLAKY in error, error
    assert "refused access (SignatureDoesNotMatch); check its credentials" in error, error
    _assert_clean(response, bucket, faulty_s3)
    assert wrong not in response.text
    # Not retried: a refusal will not change by asking again (one listing of its folder,
    # whose prefix is URL-encoded in the query, and nothing after it).
    assert faulty_s3.count(match=FLAKY.rsplit("/", 1)[-1]) == 1
    assert "refused access" in caplog.text  # the operator is told why
    for secret in (wrong, faulty_s3.server.secret_key):
        assert secret not in caplog.text
