"""The status pages' records, made from the parts' snapshots."""

from __future__ import annotations

from tenantserve.activity.tenants import TenantActivity
from tenantserve.reports import RepositoryEntry, repository_entries, tenant_rows
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits
from tenantserve.types import ModelStatus


def _resident(model_id: str, state: str = "ready") -> ModelStatus:
    return ModelStatus(model_id, state, 10, False, 0, 1, 0.0, 0.01)


def test_each_version_is_its_own_entry_with_its_state_here() -> None:
    entries = repository_entries(
        ["acme/macros/1", "acme/macros/2", "beta/m"], [_resident("acme/macros/2", "loading")]
    )
    assert entries == [
        RepositoryEntry("acme/macros", "UNAVAILABLE", version="1"),
        RepositoryEntry("acme/macros", "LOADING", version="2"),
        RepositoryEntry("beta/m", "UNAVAILABLE", version="1"),
    ]


def test_a_tenant_shows_for_what_it_holds_sent_or_is_limited_to() -> None:
    own = TenantLimit(max_concurrent=2)
    rows = tenant_rows(
        [_resident("acme/a"), _resident("acme/b")],
        [TenantActivity("beta", 5, 1, 2, 100.0)],
        TenantLimits(tenants={"gamma": own}),
        {"beta": 3},
        lambda tenant: (20, None) if tenant == "acme" else (0, 64),
    )
    assert [(r.tenant, r.models, r.nbytes, r.memory_cap_bytes, r.in_flight) for r in rows] == [
        ("acme", 2, 20, None, 0),
        ("beta", 0, 0, 64, 3),
        ("gamma", 0, 0, 64, 0),
    ]
    beta, gamma = rows[1], rows[2]
    assert (beta.requests, beta.errors, beta.rejected, beta.last_request_s) == (5, 1, 2, 100.0)
    assert gamma.limits == own
    assert gamma.last_request_s is None
