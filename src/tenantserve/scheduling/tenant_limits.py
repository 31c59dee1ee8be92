"""Per-tenant quotas: a token-bucket rate and a concurrency cap, defaults plus overrides → 429."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path

from tenantserve.documents import read_document
from tenantserve.errors import TenantLimitExceeded
from tenantserve.metrics import Metrics
from tenantserve.units import parse_size

# Buckets of tenants that went quiet are full again, the same as new ones: past this many the
# full ones are dropped, so the table does not grow with every tenant ever seen.
_BUCKETS_PRUNE_AT = 10_000


@dataclass(frozen=True, slots=True)
class TenantLimit:
    """One tenant's quotas; ``0`` or ``None`` means no limit of that kind.

    Attributes:
        rate_per_s: sustained requests per second (token bucket refill rate).
        burst: requests allowed at once above the rate (bucket size); ``None``: one second's
            worth, at least 1.
        max_concurrent: requests of the tenant in flight at once.
        max_memory_fraction: share of the memory budget the tenant's models may hold.
        max_memory_bytes: bytes the tenant's models may hold (wins over the fraction).
    """

    rate_per_s: float = 0.0
    burst: float | None = None
    max_concurrent: int = 0
    max_memory_fraction: float | None = None
    max_memory_bytes: int | None = None

    @property
    def bucket_size(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.rate_per_s)

    def memory_cap(self, budget_bytes: int) -> int | None:
        """Bytes this tenant's models may hold within a budget of ``budget_bytes``."""
        if self.max_memory_bytes is not None:
            return self.max_memory_bytes
        if self.max_memory_fraction is not None and self.max_memory_fraction < 1.0:
            return int(budget_bytes * self.max_memory_fraction)
        return None


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """Default quotas and per-tenant overrides (an override inherits what it does not set)."""

    default: TenantLimit = TenantLimit()
    tenants: Mapping[str, TenantLimit] | None = None

    def of(self, tenant: str) -> TenantLimit:
        if self.tenants is not None:
            found = self.tenants.get(tenant)
            if found is not None:
                return found
        return self.default

    def memory_caps(self, budget_bytes: int) -> tuple[int | None, dict[str, int]]:
        """(default cap, caps of tenants whose cap differs) in bytes, for the cache budget."""
        default = self.default.memory_cap(budget_bytes)
        overrides: dict[str, int] = {}
        for tenant, limit in (self.tenants or {}).items():
            cap = limit.memory_cap(budget_bytes)
            if cap != default:
                overrides[tenant] = cap if cap is not None else budget_bytes
        return default, overrides

    @classmethod
    def load(cls, path: Path, *, default: TenantLimit = TenantLimit()) -> TenantLimits:
        """Read a JSON or TOML file of ``default`` and ``tenants.<name>`` tables.

        Raises:
            ValueError: the file cannot be read or holds an unknown or malformed field.
        """
        doc = read_document(path)
        unknown = set(doc) - {"default", "tenants"}
        if unknown:
            raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
        base = _limit(doc.get("default", {}), default, where=f"{path}: default")
        tenants_doc = doc.get("tenants", {})
        if not isinstance(tenants_doc, dict):
            raise ValueError(f"{path}: 'tenants' must be a table of tenant name → limits")
        tenants = {
            str(name): _limit(spec, base, where=f"{path}: tenants.{name}")
            for name, spec in tenants_doc.items()
        }
        return cls(base, tenants)


def _limit(spec: object, base: TenantLimit, *, where: str) -> TenantLimit:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a table of limits")
    known = {f.name for f in fields(TenantLimit)}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    spec = dict(spec)
    if isinstance(spec.get("max_memory_bytes"), str):
        # The same sizes as the flags: max_memory_bytes = "1GiB".
        try:
            spec["max_memory_bytes"] = parse_size(spec["max_memory_bytes"])
        except ValueError as exc:
            raise ValueError(f"{where}: max_memory_bytes: {exc}") from None
    for name, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where}: {name} must be a number ≥ 0")
    if "max_concurrent" in spec and not isinstance(spec["max_concurrent"], int):
        raise ValueError(f"{where}: max_concurrent must be a whole number")
    if "max_memory_bytes" in spec and not isinstance(spec["max_memory_bytes"], int):
        raise ValueError(f'{where}: max_memory_bytes must be a size ("1GiB") or whole bytes')
    if spec.get("max_memory_fraction", 0) > 1:
        raise ValueError(f"{where}: max_memory_fraction must be between 0 and 1")
    return replace(base, **spec)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class TenantQuotas:
    """Enforces each tenant's rate and concurrency, answering ``TenantLimitExceeded`` (429)."""

    def __init__(
        self,
        limits: TenantLimits,
        *,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._active: dict[str, int] = {}

    @property
    def limits(self) -> TenantLimits:
        return self._limits

    def acquire(self, tenant: str) -> None:
        """Count one request of ``tenant`` in flight, if its quotas allow it; every acquire is
        followed by one :meth:`release`.

        Raises:
            TenantLimitExceeded: over the concurrency cap, or no token left in the bucket;
                ``retry_after_s`` says when the next token is due.
        """
        limit = self._limits.of(tenant)
        active = self._check_concurrency(tenant, limit)
        if limit.rate_per_s:
            wait_s = self._take(tenant, limit)
            if wait_s > 0:
                raise self._over_rate(tenant, limit, wait_s)
        self._active[tenant] = active + 1

    def release(self, tenant: str) -> None:
        left = self._active[tenant] - 1
        if left:
            self._active[tenant] = left
        else:
            del self._active[tenant]

    @contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        """:meth:`acquire` for the block's length (raises as it does)."""
        self.acquire(tenant)
        try:
            yield
        finally:
            self.release(tenant)

    def _check_concurrency(self, tenant: str, limit: TenantLimit) -> int:
        """The tenant's requests in flight, if below its cap."""
        active = self._active.get(tenant, 0)
        if limit.max_concurrent and active >= limit.max_concurrent:
            self._metrics.reject("tenant_concurrency", tenant)
            raise TenantLimitExceeded(
                f"tenant {tenant} has {active} requests in flight, its limit; retry shortly",
                retry_after_s=1.0,
            )
        return active

    def _over_rate(self, tenant: str, limit: TenantLimit, wait_s: float) -> TenantLimitExceeded:
        self._metrics.reject("tenant_rate", tenant)
        return TenantLimitExceeded(
            f"tenant {tenant} is over its rate of {limit.rate_per_s:g} requests/s",
            retry_after_s=wait_s,
        )

    def _take(self, tenant: str, limit: TenantLimit) -> float:
        """Take a token; 0 when taken, else the seconds until one is due."""
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= _BUCKETS_PRUNE_AT:
                self._prune(now)
            bucket = self._buckets[tenant] = _Bucket(limit.bucket_size, now)
        bucket.tokens = _refilled(bucket, limit, now)
        bucket.updated_s = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / limit.rate_per_s

    def _prune(self, now: float) -> None:
        for tenant, bucket in list(self._buckets.items()):
            limit = self._limits.of(tenant)
            refill = (now - bucket.updated_s) * limit.rate_per_s
            if bucket.tokens + refill >= limit.bucket_size or math.isinf(refill):
                del self._buckets[tenant]


def _refilled(bucket: _Bucket, limit: TenantLimit, now: float) -> float:
    """The tokens ``bucket`` holds at ``now``: what it had, refilled at the rate, up to its size."""
    return min(limit.bucket_size, bucket.tokens + (now - bucket.updated_s) * limit.rate_per_s)
