"""Tenant labels on metrics stay bounded (top K by traffic + other); start-up auth rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from tenantserve.config import Settings
from tenantserve.metrics import Metrics, SchedulingSnapshot


def _rejected(metrics: Metrics) -> dict[str, float]:
    return {
        sample.labels["tenant"]: sample.value
        for family in metrics.registry.collect()
        if family.name == "tenantserve_rejected_requests"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_only_the_top_tenants_get_a_label_of_their_own() -> None:
    metrics = Metrics(CollectorRegistry(), top_tenants=2)
    for tenant in ("a", "b"):
        metrics.tenants.observe(tenant)
        metrics.reject("queue_full", tenant)
    metrics.tenants.observe("c")
    metrics.reject("queue_full", "c")
    assert _rejected(metrics) == {"a": 1, "b": 1, "other": 1}
    # c grows past twice the weakest labelled tenant: it takes b's place, b's series go.
    for _ in range(5):
        metrics.tenants.observe("c")
    metrics.reject("timeout", "c")
    metrics.reject("timeout", "b")
    labels = set(_rejected(metrics))
    assert "c" in labels
    assert len(labels - {"other"}) == 2
    assert metrics.tenants.label_of("b") == "other" or metrics.tenants.label_of("a") == "other"


def test_scheduling_gauges_fold_unlabelled_tenants_into_other() -> None:
    metrics = Metrics(CollectorRegistry(), top_tenants=1)
    metrics.tenants.observe("big")
    snapshot = SchedulingSnapshot(
        queued={"admission": 3, "predict": 1, "load": 0},
        in_flight_by_tenant={"big": 4, "x": 1, "y": 2},
    )
    metrics.watch_scheduling(lambda: snapshot)
    value = metrics.registry.get_sample_value
    assert value("tenantserve_queue_depth", {"queue": "admission"}) == 3
    assert value("tenantserve_tenant_requests_in_flight", {"tenant": "big"}) == 4
    assert value("tenantserve_tenant_requests_in_flight", {"tenant": "other"}) == 3


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_serves_without_keys(host: str) -> None:
    assert Settings(host=host).loopback


def test_a_public_bind_needs_keys_or_an_explicit_opt_out(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"--api-keys \(TENANTSERVE_API_KEYS\)"):
        Settings(host="0.0.0.0")
    assert not Settings(host="0.0.0.0", insecure_no_auth=True).loopback
    Settings(host="10.0.0.5", api_keys=tmp_path / "keys.toml")
