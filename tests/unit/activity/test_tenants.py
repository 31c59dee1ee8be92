"""TenantLedger: exact counts per tenant, bounded by forgetting the quietest."""

from __future__ import annotations

from tenantserve.activity.tenants import TenantLedger


def test_counts_requests_errors_and_refusals_per_tenant() -> None:
    ledger = TenantLedger()
    ledger.record("acme", 1.0, error=False, rejected=False)
    ledger.record("acme", 2.0, error=True, rejected=False)
    ledger.record("globex", 3.0, error=False, rejected=True)
    rows = {r.tenant: r for r in ledger.rows()}
    assert (rows["acme"].requests, rows["acme"].errors, rows["acme"].last_request_s) == (2, 1, 2.0)
    assert (rows["globex"].requests, rows["globex"].rejected) == (1, 1)


def test_past_its_bound_the_tenant_quiet_for_longest_is_forgotten() -> None:
    ledger = TenantLedger(max_tenants=2)
    ledger.record("a", 1.0, error=False, rejected=False)
    ledger.record("b", 2.0, error=False, rejected=False)
    ledger.record("a", 3.0, error=False, rejected=False)  # a is now the most recent
    ledger.record("c", 4.0, error=False, rejected=False)
    assert [r.tenant for r in ledger.rows()] == ["a", "c"]
