"""``/v1/status``, pin / unpin and ``/ui`` on a real server: schema, traffic, events, labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from fixtures.models import ModelStoreDir
from fixtures.oip import infer, write_model
from fixtures.server import ThreadServer

MiB = 1024 * 1024


def status(client: httpx.Client, openapi: dict[str, Any] | None = None) -> dict[str, Any]:
    """``GET /v1/status``, validated against the schema the server publishes."""
    response = client.get("/v1/status")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = response.json()
    spec = openapi if openapi is not None else client.get("/openapi.json").json()
    schema = {"$ref": "#/components/schemas/Status", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(doc)
    return doc


def test_status_follows_traffic_and_matches_its_schema(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root, memory_budget=512 * MiB)
    ids = list(synthetic_store.model_ids[:3])
    with httpx.Client(base_url=server.url) as client:
        spec = client.get("/openapi.json").json()
        assert "/v1/status" in spec["paths"]
        assert "/v1/models/{model_name}/pin" in spec["paths"]
        before = status(client, spec)
        assert before["models"] == []
        assert before["models_total"] == 0
        assert before["totals"]["requests"] == 0
        assert before["memory"]["budget_bytes"] == 512 * MiB
        assert before["window"]["hit_ratio"] is None

        for model_id in ids:
            for _ in range(2):
                assert infer(client, model_id).status_code == 200
        doc = status(client, spec)

    models = {m["id"]: m for m in doc["models"]}
    assert set(models) == set(ids)
    assert all(m["hits"] == 2 and m["bytes"] > 0 and not m["pinned"] for m in models.values())
    assert all(m["in_flight"] == 0 and m["state"] == "ready" for m in models.values())
    assert doc["memory"]["used_bytes"] >= sum(m["bytes"] for m in models.values())
    assert doc["memory"]["free_bytes"] == 512 * MiB - doc["memory"]["used_bytes"]
    totals = doc["totals"]
    assert (totals["requests"], totals["hits"], totals["misses"]) == (6, 3, 3)
    assert (totals["loads"], totals["evictions"], totals["errors"]) == (3, 0, 0)
    assert doc["window"]["requests"] == 6
    assert doc["window"]["hit_ratio"] == 0.5
    assert doc["window"]["p50_s"] is not None
    assert doc["window"]["p50_s"] > 0
    assert sum(p["requests"] for p in doc["series"]["points"]) == 6
    loads = [e for e in doc["events"] if e["kind"] == "load"]
    assert sorted(e["model"] for e in loads) == sorted(ids)
    assert all(e["bytes"] == models[e["model"]]["bytes"] for e in loads)
    assert [e["seq"] for e in doc["events"]] == sorted(
        (e["seq"] for e in doc["events"]), reverse=True
    )
    hot = {h["id"]: h["requests"] for h in doc["hot"]["models"]}
    assert hot == dict.fromkeys(ids, 2)
    tenants = {h["id"]: h["requests"] for h in doc["hot"]["tenants"]}
    assert tenants == {model_id.split("/")[0]: 2 for model_id in ids}


def test_evictions_failures_and_rejections_are_events(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    store = tmp_path / "store"
    for i in range(4):
        write_model(store / "acme" / f"m{i}", weight_floats=512 * 1024, seed=i)  # 2 MiB file
    (store / "acme" / "broken").mkdir(parents=True)
    (store / "acme" / "broken" / "model.onnx").write_bytes(b"not an onnx graph" * 100)
    write_model(store / "slow" / "m", weight_floats=64, seed=9)
    # Room for two 2 MiB models at most (a loaded one holds 2.01 MiB: its mapped file and a
    # session; a load may reserve more), so four in turn evict at least twice and the last
    # stays; tenant "slow" may send one request, then is throttled.
    limits = tmp_path / "limits.toml"
    limits.write_text("[tenants.slow]\nrate_per_s = 0.001\nburst = 1\n")
    # LRU: which model goes is the policy's business; this test is about the events.
    server = start_server(store, memory_budget=9 * MiB // 2, tenant_limits=limits, eviction="lru")
    with httpx.Client(base_url=server.url) as client:
        for i in range(4):
            assert infer(client, f"acme/m{i}").status_code == 200
        assert infer(client, "acme/broken").status_code == 500
        assert infer(client, "slow/m").status_code == 200
        throttled = [infer(client, "slow/m").status_code for _ in range(3)]
        doc = status(client)

    assert throttled == [429, 429, 429]
    kinds = [e["kind"] for e in doc["events"]]
    assert kinds.count("evict") >= 2
    evicted = {e["model"] for e in doc["events"] if e["kind"] == "evict"}
    assert evicted <= {"acme/m0", "acme/m1", "acme/m2"}  # never the last one used
    failed = [e for e in doc["events"] if e["kind"] == "load_failed"]
    assert [e["model"] for e in failed] == ["acme/broken"]
    assert failed[0]["detail"]
    rejected = [e for e in doc["events"] if e["kind"] == "rejected"]
    # Repeats within seconds fold into one line with a count.
    assert [(e["model"], e["count"]) for e in rejected] == [("slow/m", 3)]
    assert rejected[0]["detail"] == "TenantLimitExceeded"
    totals = doc["totals"]
    assert totals["evictions"] == kinds.count("evict")
    assert (totals["load_failures"], totals["rejected"], totals["errors"]) == (1, 3, 1)
    slow = next(t for t in doc["hot"]["tenants"] if t["id"] == "slow")
    assert (slow["requests"], slow["rejected"]) == (4, 3)


def test_pin_and_unpin_at_run_time(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root, memory_budget=512 * MiB)
    model_id = synthetic_store.model_ids[0]
    with httpx.Client(base_url=server.url) as client:
        # Pinning a model that is not resident loads it.
        pinned = client.post(f"/v1/models/{model_id}/pin")
        assert pinned.status_code == 200, pinned.text
        assert pinned.json() == {"model": model_id, "pinned": True}
        doc = status(client)
        assert [(m["id"], m["pinned"]) for m in doc["models"]] == [(model_id, True)]
        assert doc["memory"]["pinned_bytes"] == doc["models"][0]["bytes"] > 0

        unpinned = client.post(f"/v1/models/{model_id}/unpin")
        assert unpinned.json() == {"model": model_id, "pinned": False}
        doc = status(client)
        assert doc["models"][0]["pinned"] is False
        assert doc["memory"]["pinned_bytes"] == 0

        other = synthetic_store.model_ids[1]
        assert client.post(f"/v1/models/{other}/unpin").status_code == 404
        assert client.post("/v1/models/no-such/model/pin").status_code == 404
        assert client.post("/v1/models/acme/-bad/pin").status_code == 400
        assert client.post(f"/v1/models/{model_id}/freeze").status_code == 404
        assert client.get("/v1/status", params={"models": "-1"}).status_code == 400
        assert client.get("/v1/status", params={"models": "0"}).json()["models"] == []


def test_status_page_is_served_from_the_package(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(synthetic_store.root)
    with httpx.Client(base_url=server.url) as client:
        moved = client.get("/ui")
        assert moved.status_code == 308
        assert moved.headers["location"] == "ui/"
        page = client.get("/ui", follow_redirects=True)
        assert page.status_code == 200
        assert page.url.path == "/ui/"
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset in ('src="status.js"', 'href="status.css"'):
            assert asset in page.text
        # Nothing from elsewhere: no CDN, no absolute URLs.
        assert "http://" not in page.text
        assert "https://" not in page.text
        script = client.get("/ui/status.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "../v1/status" in script.text
        assert client.get("/ui/status.css").headers["content-type"].startswith("text/css")
        assert client.get("/ui/secrets.txt").status_code == 404
        assert client.get("/ui/..%2Fapp.py").status_code == 404


def test_per_model_series_stay_within_top_k_plus_other(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    store = tmp_path / "store"
    ids = [f"t{i % 4}/m{i:02d}" for i in range(12)]
    for i, model_id in enumerate(ids):
        write_model(store / model_id, weight_floats=64, seed=i)
    server = start_server(store, top_models=3)
    sent = 0
    with httpx.Client(base_url=server.url) as client:
        for i, model_id in enumerate(ids):
            for _ in range(1 + i % 3):
                assert infer(client, model_id).status_code == 200
                sent += 1
        text = client.get("/metrics").text

    requests: dict[str, float] = {}
    latency_series: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tenantserve_model_requests_total":
                requests[sample.labels["model"]] = sample.value
            elif sample.name == "tenantserve_model_request_seconds_count":
                latency_series.add(sample.labels["model"])
    assert len(requests) <= 3 + 1
    assert "other" in requests
    assert latency_series == set(requests)
    assert sum(requests.values()) == sent


def test_tenants_lists_what_each_tenant_holds_sent_and_may_do(
    synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    limits = tmp_path / "limits.toml"
    limits.write_text("[tenants.quiet]\nrate_per_s = 5.0\nmax_concurrent = 2\n")
    server = start_server(synthetic_store.root, memory_budget=512 * MiB, tenant_limits=limits)
    first, second = synthetic_store.model_ids[:2]  # two tenants
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):
            assert infer(client, first).status_code == 200
        assert infer(client, second).status_code == 200
        assert infer(client, "nobody/nothing").status_code == 404
        response = client.get("/v1/tenants")
        spec = client.get("/openapi.json").json()
    assert response.status_code == 200
    doc = response.json()
    schema = {"$ref": "#/components/schemas/Tenants", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(doc)
    rows = {row["tenant"]: row for row in doc["tenants"]}
    head = rows[first.split("/")[0]]
    assert (head["models"], head["requests"], head["errors"]) == (1, 3, 0)
    assert head["bytes"] > 0
    assert head["last_request_s"] is not None
    assert rows["nobody"]["models"] == 0
    assert rows["nobody"]["errors"] == 1
    # A tenant with limits of its own is listed before it sends anything.
    quiet = rows["quiet"]
    assert quiet["requests"] == 0
    assert quiet["limits"] == {"rate_per_s": 5.0, "burst": 5.0, "max_concurrent": 2}
    assert list(rows) == sorted(rows)
