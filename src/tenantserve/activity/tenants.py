"""TenantLedger: requests, errors, refusals and last use of each tenant, in bounded memory."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Tenants are named by callers (the first segment of any model id): past this many, the one
# quiet for longest is forgotten, so the table cannot grow with every id ever sent.
DEFAULT_MAX_TENANTS = 10_000


@dataclass(frozen=True, slots=True)
class TenantActivity:
    """One tenant's counts since the server started (or since it was last forgotten)."""

    tenant: str
    requests: int
    errors: int
    rejected: int
    last_request_s: float


class TenantLedger:
    """Per-tenant request counts, most recently active last; not thread-safe (the caller's
    lock guards it)."""

    def __init__(self, max_tenants: int = DEFAULT_MAX_TENANTS) -> None:
        self._max_tenants = max_tenants
        self._rows: OrderedDict[str, list[float]] = OrderedDict()

    def record(self, tenant: str, now_s: float, *, error: bool, rejected: bool) -> None:
        row = self._rows.get(tenant)
        if row is None:
            row = self._rows[tenant] = [0, 0, 0, 0.0]
            if len(self._rows) > self._max_tenants:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(tenant)
        row[0] += 1
        row[1] += error
        row[2] += rejected
        row[3] = now_s

    def rows(self) -> list[TenantActivity]:
        return [
            TenantActivity(tenant, int(r[0]), int(r[1]), int(r[2]), r[3])
            for tenant, r in self._rows.items()
        ]
