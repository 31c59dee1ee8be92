"""A store that cannot be used is never "ready": the cause is in /v1/status and readiness comes
back by itself once the store answers; a store that takes no connection is answered for in
seconds, naming the endpoint tried (for the operator) and nothing of it (for callers)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from fixtures.models import make_model
from fixtures.polling import until
from fixtures.server import ProcessServer, ThreadServer, free_port
from tenantserve.app import preflight
from tenantserve.config import Settings
from tenantserve.errors import StoreUnavailable, StoreUnreachable

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def _ready(url: str) -> bool:
    return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200


def test_a_missing_store_folder_is_not_ready_until_it_appears(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    root = tmp_path / "nostore"
    server = start_server(root, probe="/v2/health/live")
    answer = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
    assert answer.status_code == 503
    store = httpx.get(f"{server.url}/v1/status", timeout=5).json()["store"]
    assert store["ok"] is False
    assert f"no folder {root}" in store["problem"]
    assert "--store" in store["problem"]

    make_model(root / "acme" / "m", size_bytes=50_000)
    until(lambda: _ready(server.url), what="readiness after the store appeared")
    assert httpx.get(f"{server.url}/v1/status", timeout=5).json()["store"]["ok"] is True
    answer = httpx.post(f"{server.url}/v2/models/acme/m/infer", json=BODY, timeout=30)
    assert answer.status_code == 200, answer.text


def test_preflight_names_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable) as info:
        preflight(Settings(store=str(tmp_path / "absent"), cache_dir=tmp_path / "c"))
    assert str(tmp_path) not in str(info.value)  # the message is for callers
    assert f"no folder {tmp_path / 'absent'}" in info.value.for_operator()


@pytest.fixture
def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """An S3 endpoint on a loopback port where nothing listens (a store that is down)."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "tenantserve-test", "AWS_SECRET_ACCESS_KEY": "not-a-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return endpoint


def test_an_s3_store_that_takes_no_connection_names_its_endpoint(
    closed_endpoint: str, tmp_path: Path
) -> None:
    with pytest.raises(StoreUnreachable) as info:
        # The long retry budget is for slow or throttled answers, not for a refused connection.
        preflight(
            Settings(store="s3://models/fleet", cache_dir=tmp_path, store_retry_deadline_s=600)
        )
    assert "could not be connected to (" in str(info.value)
    assert closed_endpoint not in str(info.value)
    hint = info.value.for_operator()
    assert f"at {closed_endpoint}" in hint
    assert "AWS_ENDPOINT_URL" in hint


def test_a_cold_call_to_a_store_that_is_down_gets_a_503_naming_the_cause(
    closed_endpoint: str, tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server("s3://models/fleet", probe="/v2/health/live", store_retry_deadline_s=600)
    assert not _ready(server.url)
    answer = httpx.post(f"{server.url}/v2/models/acme/m/infer", json=BODY, timeout=60)
    assert answer.status_code == 503, answer.text
    assert "could not be connected to" in answer.json()["error"]
    assert closed_endpoint not in answer.text
    assert "Retry-After" in answer.headers


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantserve", "serve", "--port", str(free_port()), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_serve_refuses_a_missing_store_and_a_typod_pin_in_one_line(tmp_path: Path) -> None:
    missing = _serve("--store", str(tmp_path / "nostore"), "--cache-dir", str(tmp_path / "c"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1, missing.stderr
    assert f"no folder {tmp_path / 'nostore'}" in missing.stderr
    make_model(tmp_path / "store" / "acme" / "macros", size_bytes=20_000)
    typo = _serve("--store", str(tmp_path / "store"), "--pin", "acme/macro",
                  "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert typo.returncode == 2
    assert typo.stderr == (
        "error: --pin 'acme/macro' matches no model in the store; nearest: acme/macros\n"
    )


def test_serve_refuses_an_s3_store_that_is_down_naming_the_endpoint(
    closed_endpoint: str, tmp_path: Path
) -> None:
    down = _serve("--store", "s3://models/fleet", "--cache-dir", str(tmp_path / "c"))
    assert down.returncode == 2
    assert down.stderr.count("\n") == 1, down.stderr
    assert f"at {closed_endpoint}" in down.stderr


def test_a_limits_file_takes_sizes_and_a_tenant_with_no_model_is_warned_of(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    make_model(tmp_path / "store" / "acme" / "macros", size_bytes=20_000)
    limits = tmp_path / "limits.toml"
    limits.write_text('[tenants.acme]\nmax_memory_bytes = "1GiB"\n[tenants.acem]\nrate_per_s = 1\n')
    server = start_process(tmp_path / "store", "--tenant-limits", str(limits))
    tenants = httpx.get(f"{server.url}/v1/tenants", timeout=10).json()["tenants"]
    assert {t["tenant"]: t["memory_cap_bytes"] for t in tenants}["acme"] == 1024**3
    warnings = [line for line in server.log_path.read_text().splitlines() if "warning:" in line]
    assert warnings == [
        "warning: --tenant-limits names tenant 'acem', which has no model in the store "
        "(nearest: acme)"
    ]
