"""What the cache reports is what happened: a model's size is learned once and the ledger never
passes the budget; an eviction says what needed the room and which budget was full; counters
count inference requests and models that exist but fail to load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from fixtures.models import external_data_model, make_model
from fixtures.oip import infer, scrape
from fixtures.server import ThreadServer

KiB = 1024
MiB = 1024 * KiB


def _status(client: httpx.Client) -> dict[str, Any]:
    doc: dict[str, Any] = client.get("/v1/status").json()
    return doc


def test_a_tiny_models_size_is_learned_once_and_the_ledger_stays_within_the_budget(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    make_model(tmp_path / "tiny" / "m", size_bytes=2_000)
    server = start_server(tmp_path, memory_budget=64 * KiB)
    codes: list[int] = []
    sizes: list[int] = []
    with httpx.Client(base_url=server.url) as client:
        for _ in range(4):
            codes.append(infer(client, "tiny/m").status_code)
            status = _status(client)
            assert status["memory"]["used_bytes"] <= status["memory"]["budget_bytes"], status
            sizes.extend(m["bytes"] for m in status["models"])
            client.post("/v2/repository/models/tiny/m/unload")
    # The same answer every time: either it fits (200) or it never does (507), never both.
    assert len(set(codes)) == 1, codes
    assert codes[0] in (200, 507)
    assert len(set(sizes)) <= 1, sizes  # measured on the first load, the same ever after


def test_an_eviction_names_the_load_that_needed_room_and_the_full_budget(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    for name in ("a", "b"):
        make_model(tmp_path / "acme" / name, size_bytes=7 * MiB)
    make_model(tmp_path / "globex" / "c", size_bytes=7 * MiB)
    # Room for one model per tenant (share), each holding its 7 MiB file and a little more.
    server = start_server(tmp_path, memory_budget=24 * MiB, tenant_max_memory_fraction=0.5)
    with httpx.Client(base_url=server.url) as client:
        for model_id in ("acme/a", "acme/b"):
            assert infer(client, model_id).status_code == 200
        evictions = [e for e in _status(client)["events"] if e["kind"] == "evict"]
    assert [e["model"] for e in evictions] == ["acme/a"]
    detail = evictions[0]["detail"]
    assert "loading acme/b needed" in detail
    assert "tenant acme's share" in detail


def test_metadata_reads_are_not_cache_hits_and_a_missing_model_is_no_load_failure(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    make_model(tmp_path / "acme" / "m", size_bytes=200_000)
    server = start_server(tmp_path)
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, "acme/m").status_code == 200
        before = scrape(client)
        for _ in range(3):
            assert client.get("/v2/models/acme/m").status_code == 200
        # A typo'd pin or load of a model that is not in the store: 404, not a load failure.
        assert client.post("/v1/models/acme/nosuch/pin").status_code == 404
        assert client.post("/v2/repository/models/acme/nosuch/load").status_code == 404
        after = scrape(client)
        # GET on the infer path says to POST rather than "model …/infer not found".
        wrong = client.get("/v2/models/acme/m/infer")
    assert (
        after["tenantserve_model_cache_hits_total"] == before["tenantserve_model_cache_hits_total"]
    )
    failures = "tenantserve_model_load_failures_total"
    assert after.get(failures, 0.0) == before.get(failures, 0.0)
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert "POST" in wrong.json()["error"]


def test_a_model_that_cannot_be_made_fast_to_load_says_why_in_its_status(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    make_model(tmp_path / "acme" / "fast", size_bytes=50_000)
    external_data_model(tmp_path / "acme" / "external")
    server = start_server(tmp_path)
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, "acme/fast").status_code == 200
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                            "data": [0.5] * 16}]}  # fmt: skip
        assert client.post("/v2/models/acme/external/infer", json=body).status_code == 200
        status = _status(client)
    notes = {m["id"]: m["note"] for m in status["models"]}
    assert notes["acme/fast"] == ""
    assert notes["acme/external"].startswith("loads from model.onnx: ONNX Runtime cannot convert")
    loads = {e["model"]: e["detail"] for e in status["events"] if e["kind"] == "load"}
    assert loads["acme/external"] == notes["acme/external"]
