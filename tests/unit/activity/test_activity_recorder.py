"""Activity: requests, rejections and cache events, as /v1/status reads them."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.activity import Activity, CacheEvent
from tenantserve.errors import InvalidInput, TenantLimitExceeded
from tenantserve.types import ModelId


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000.0

    def __call__(self) -> float:
        return self.now_s


def test_requests_and_their_outcomes_are_counted() -> None:
    clock = Clock()
    activity = Activity(clock=clock, bucket_s=5.0, buckets=12)
    model = ModelId.parse("acme/macros")
    with activity.request(model, hit=False):
        pass
    with activity.request(model, hit=True):
        pass
    with pytest.raises(InvalidInput), activity.request(model, hit=True):
        raise InvalidInput("bad tensor")
    with pytest.raises(TenantLimitExceeded), activity.request(model, hit=True):
        raise TenantLimitExceeded("acme is over its rate")

    snap = activity.snapshot()
    t = snap.totals
    assert (t.requests, t.hits, t.misses, t.errors, t.rejected) == (4, 2, 1, 1, 1)
    assert (snap.window.requests, snap.window.hit_ratio) == (4, 2 / 3)
    assert sum(p.requests for p in snap.series) == 4
    assert len(snap.series) == 12
    (rejected,) = snap.events
    assert (rejected.kind, rejected.model_id, rejected.detail) == (
        "rejected", "acme/macros", "TenantLimitExceeded",
    )  # fmt: skip
    (hot_model,) = snap.hot_models
    (hot_tenant,) = snap.hot_tenants
    assert (hot_model.key, hot_model.requests, hot_model.misses) == ("acme/macros", 4, 1)
    assert (hot_tenant.key, hot_tenant.rejected, hot_tenant.errors) == ("acme", 1, 1)
    assert snap.labelled_models == 0  # no registry: no per-model metrics


def test_a_cancelled_request_is_neither_an_error_nor_a_rejection() -> None:
    activity = Activity()
    with pytest.raises(asyncio.CancelledError), activity.request(ModelId.parse("a/b"), hit=True):
        raise asyncio.CancelledError
    totals = activity.snapshot().totals
    assert (totals.requests, totals.errors, totals.rejected) == (1, 0, 0)


def test_cache_events_become_events_and_totals() -> None:
    clock = Clock()
    activity = Activity(clock=clock)
    activity.cache_event(CacheEvent("load", "acme/a", 1000, 0.25))
    clock.now_s += 1
    activity.cache_event(CacheEvent("evict", "acme/a", 1000))
    activity.cache_event(CacheEvent("unload", "acme/b", 10))
    activity.cache_event(CacheEvent("load_failed", "acme/c", detail="not an onnx file"))

    snap = activity.snapshot(max_events=3)
    t = snap.totals
    assert (t.loads, t.evictions, t.unloads, t.load_failures) == (1, 1, 1, 1)
    assert [e.kind for e in snap.events] == ["load_failed", "unload", "evict"]
    assert snap.events[2].time_s == 1001.0
    assert snap.events[0].detail == "not an onnx file"


def test_per_model_metrics_go_to_the_registry() -> None:
    registry = CollectorRegistry()
    activity = Activity(registry=registry, model_label_top_k=1)
    for name in ("acme/a", "acme/a", "acme/b"):
        with activity.request(ModelId.parse(name), hit=True):
            pass
    values = {
        s.labels["model"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "tenantserve_model_requests_total"
    }
    assert values == {"acme/a": 2, "other": 1}
    assert activity.snapshot().labelled_models == 1
