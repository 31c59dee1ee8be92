"""Per-tenant quotas: token bucket, concurrency cap, overrides, the limits file."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.errors import TenantLimitExceeded
from tenantserve.metrics import Metrics
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits, TenantQuotas


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _quotas(limits: TenantLimits, clock: Clock) -> tuple[TenantQuotas, Metrics]:
    metrics = Metrics(CollectorRegistry())
    for tenant in ("acme", "globex"):
        metrics.tenants.observe(tenant)
    return TenantQuotas(limits, metrics=metrics, clock=clock), metrics


def _rejected(metrics: Metrics, reason: str, tenant: str) -> float:
    value = metrics.registry.get_sample_value(
        "tenantserve_rejected_requests_total", {"reason": reason, "tenant": tenant}
    )
    return value or 0.0


def test_token_bucket_allows_a_burst_then_says_when_the_next_token_is_due() -> None:
    clock = Clock()
    quotas, metrics = _quotas(TenantLimits(TenantLimit(rate_per_s=2, burst=3)), clock)
    for _ in range(3):
        with quotas.hold("acme"):
            pass
    with pytest.raises(TenantLimitExceeded) as refused, quotas.hold("acme"):
        pass
    assert refused.value.retry_after_s == pytest.approx(0.5)
    with quotas.hold("globex"):  # another tenant has its own bucket
        pass
    clock.now += 0.5
    with quotas.hold("acme"):
        pass
    assert _rejected(metrics, "tenant_rate", "acme") == 1
    assert _rejected(metrics, "tenant_rate", "globex") == 0


def test_concurrency_cap_counts_requests_in_flight() -> None:
    quotas, metrics = _quotas(TenantLimits(TenantLimit(max_concurrent=2)), Clock())
    with quotas.hold("acme"), quotas.hold("acme"):
        with pytest.raises(TenantLimitExceeded), quotas.hold("acme"):
            pass
        with quotas.hold("globex"):
            pass
    with quotas.hold("acme"):  # the slots came back
        pass
    assert _rejected(metrics, "tenant_concurrency", "acme") == 1


def test_a_request_refused_for_concurrency_takes_no_token() -> None:
    limits = TenantLimits(TenantLimit(rate_per_s=1, burst=1, max_concurrent=1))
    quotas, _ = _quotas(limits, Clock())
    outer = quotas.hold("acme")
    outer.__enter__()
    with pytest.raises(TenantLimitExceeded, match="in flight"), quotas.hold("acme"):
        pass
    outer.__exit__(None, None, None)
    with pytest.raises(TenantLimitExceeded, match="rate"), quotas.hold("acme"):
        pass


def test_limits_file_overrides_inherit_the_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "limits.toml"
    toml.write_text(
        "[default]\nrate_per_s = 10\nmax_memory_fraction = 0.5\n\n"
        "[tenants.acme]\nrate_per_s = 100\nmax_concurrent = 4\n\n"
        "[tenants.globex]\nmax_memory_bytes = 1000\n"
    )
    limits = TenantLimits.load(toml, default=TenantLimit(max_concurrent=8))
    assert limits.of("acme") == TenantLimit(
        rate_per_s=100, max_concurrent=4, max_memory_fraction=0.5
    )
    assert limits.of("other").rate_per_s == 10
    assert limits.of("other").max_concurrent == 8
    assert limits.memory_caps(10_000) == (5_000, {"globex": 1000})

    json_file = tmp_path / "limits.json"
    json_file.write_text('{"tenants": {"acme": {"burst": 5}}}')
    assert TenantLimits.load(json_file).of("acme").bucket_size == 5


@pytest.mark.parametrize(
    "text",
    [
        "[default]\nrate = 1\n",
        "[tenants.acme]\nrate_per_s = -1\n",
        "[tenants.acme]\nmax_concurrent = 1.5\n",
        "[tenants.acme]\nmax_memory_fraction = 2\n",
        "tenants = 3\n",
        "[other]\n",
        "not toml [",
    ],
)
def test_limits_file_errors_are_refused_with_the_place(tmp_path: Path, text: str) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"limits\.toml"):
        TenantLimits.load(path)
