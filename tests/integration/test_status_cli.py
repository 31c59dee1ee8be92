"""``tenantserve status`` and ``tenantserve models …`` against a live server."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from fixtures.models import ModelStoreDir, make_model
from fixtures.oip import infer
from fixtures.server import ThreadServer, free_port
from tenantserve.cli import app

MiB = 1024 * 1024


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    # Wide, so rich never folds a model id across lines.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "220", **(env or {})})


def _resident(url: str) -> dict[str, bool]:
    doc = httpx.get(f"{url}/v1/status", timeout=10).json()
    return {m["id"]: m["pinned"] for m in doc["models"]}


def test_status_shows_what_the_server_holds(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root, memory_budget=256 * MiB)
    ids = synthetic_store.model_ids[:2]
    with httpx.Client(base_url=server.url) as client:
        for model_id in ids:
            assert infer(client, model_id).status_code == 200
        assert infer(client, ids[0]).status_code == 200

    result = _cli("status", "--url", server.url)

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"at {server.url}" in out
    assert "ready" in out
    assert "of 256 MiB" in out
    assert "3 requests" in out
    assert "hit ratio 33.3%" in out
    assert "Resident models (2)" in out
    for model_id in ids:
        assert model_id in out
    assert "Hottest models" in out
    assert "Hottest tenants" in out
    assert "Recent events" in out
    assert "load" in out

    as_json = _cli("status", "--url", server.url, "--json")
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["totals"]["requests"] == 3
    assert doc["models_total"] == 2

    watched = _cli("status", "--url", server.url, "--watch", "--count", "2", "--interval", "0.1")
    assert watched.exit_code == 0, watched.output
    assert "Resident models (2)" in watched.stdout


def test_models_commands_load_pin_unpin_unload(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root, memory_budget=256 * MiB)
    first, second = synthetic_store.model_ids[:2]
    url = ("--url", server.url)

    loaded = _cli("models", "load", first, *url)
    assert loaded.exit_code == 0, loaded.output
    assert re.fullmatch(rf"loaded {first} \(\d+(\.\d)? [KM]iB\)\n", loaded.stdout)
    assert _resident(server.url) == {first: False}

    pinned = _cli("models", "pin", second, *url)  # not resident: pinning loads it
    assert pinned.exit_code == 0, pinned.output
    assert _resident(server.url) == {first: False, second: True}

    listed = _cli("models", "list", *url)
    assert listed.exit_code == 0, listed.output
    assert first in listed.stdout
    assert second in listed.stdout
    assert "pinned" in listed.stdout

    everything = _cli("models", "list", "--all", *url)
    assert everything.exit_code == 0, everything.output
    for model_id in synthetic_store.model_ids:
        assert model_id in everything.stdout
    assert everything.stdout.count("│ loaded") == 2
    assert "not loaded" in everything.stdout

    assert _cli("models", "unpin", second, *url).exit_code == 0
    assert _resident(server.url) == {first: False, second: False}
    unloaded = _cli("models", "unload", first, *url)
    assert unloaded.exit_code == 0
    assert unloaded.stdout.strip() == f"unloaded {first}"
    assert _resident(server.url) == {second: False}

    load_pinned = _cli("models", "load", first, "--pin", *url)
    assert load_pinned.exit_code == 0, load_pinned.output
    assert _resident(server.url) == {first: True, second: False}

    missing = _cli("models", "unload", "tenant-000/no-such-model", *url)
    assert missing.exit_code == 1
    assert "error: 404" in missing.stderr
    assert "not loaded" in missing.stderr


def test_unreachable_server_is_one_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    for args in (("status",), ("models", "list"), ("models", "pin", "acme/m")):
        result = _cli(*args, env={"TENANTSERVE_URL": url})
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith(f"error: cannot reach tenantserve at {url}")
        assert "--url" in result.stderr
        assert "Traceback" not in result.output


def test_api_key_is_sent_as_a_bearer_token(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root)
    seen: list[str | None] = []

    def record(request: httpx.Request) -> None:
        seen.append(request.headers.get("authorization"))

    # The server runs without keys; what matters is what the CLI sends.
    from tenantserve.tools.remote.client import StatusClient

    with StatusClient(server.url, api_key="s3cret") as client:
        assert client._http is not None
        client._http.event_hooks["request"] = [record]
        client.status()
    assert seen == ["Bearer s3cret"]
    result = _cli("status", "--url", server.url, env={"TENANTSERVE_API_KEY": "s3cret"})
    assert result.exit_code == 0, result.output


def test_at_80_columns_status_and_tenants_keep_every_id_whole(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    long_ids = [f"a-tenant-with-a-long-name/macros-for-the-support-desk-{i}" for i in range(2)]
    for i, model_id in enumerate(long_ids):
        make_model(tmp_path / model_id, size_bytes=100_000, seed=i)
    server = start_server(tmp_path, memory_budget=256 * MiB)
    with httpx.Client(base_url=server.url) as client:
        for model_id in long_ids:
            assert infer(client, model_id).status_code == 200
    bare = server.url.removeprefix("http://")  # as people type it: host:port
    for args in (["status"], ["tenants", "list"], ["models", "list", "--all"]):
        result = CliRunner().invoke(app, [*args, "--url", bare], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert [line for line in lines if len(line) > 80] == [], result.stdout
        expected = ["a-tenant-with-a-long-name"] if args[0] == "tenants" else long_ids
        for word in expected:
            assert any(word in line for line in lines), (args, word, result.stdout)


def test_tenants_list_and_the_store_listing_say_what_each_holds(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root, memory_budget=256 * MiB)
    first = synthetic_store.model_ids[0]
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, first).status_code == 200
    tenants = _cli("tenants", "list", "--url", server.url)
    assert tenants.exit_code == 0, tenants.output
    row = next(line for line in tenants.stdout.splitlines() if first.split("/")[0] in line)
    assert re.search(r"│\s+1\s+│", row), row  # one model, one request
    listing = _cli("models", "list", "--all", "--url", server.url)
    assert listing.exit_code == 0, listing.output
    states = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in listing.stdout.splitlines()
        if line.count("│") == 3
    }
    assert states[first] == "loaded"
    assert states[synthetic_store.model_ids[1]] == "not loaded"
