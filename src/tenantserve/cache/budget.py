"""MemoryBudget: bytes reserved and used, in all and per tenant; nothing here decides residency."""

from __future__ import annotations

from collections.abc import Mapping


class MemoryBudget:
    """A byte ledger. Callers reserve before a load and settle to the measured size after.

    Besides the one capacity, each tenant may have a cap of its own (``tenant_cap_bytes`` for
    all, ``tenant_caps`` per tenant), so one tenant's fleet cannot hold the whole budget.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        tenant_cap_bytes: int | None = None,
        tenant_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._tenant_cap_bytes = tenant_cap_bytes
        self._tenant_caps = dict(tenant_caps or {})
        self._by_tenant: dict[str, int] = {}

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def fits(self, nbytes: int) -> bool:
        return self.used_bytes + nbytes <= self.capacity_bytes

    def can_ever_fit(self, nbytes: int) -> bool:
        return nbytes <= self.capacity_bytes

    def cap_of(self, tenant: str) -> int | None:
        """Bytes ``tenant``'s models may hold, or ``None`` when only the whole budget bounds it."""
        return self._tenant_caps.get(tenant, self._tenant_cap_bytes)

    def used_by(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)

    def tenant_fits(self, tenant: str, nbytes: int) -> bool:
        cap = self.cap_of(tenant)
        return cap is None or self.used_by(tenant) + nbytes <= cap

    def tenant_can_ever_fit(self, tenant: str, nbytes: int) -> bool:
        cap = self.cap_of(tenant)
        return cap is None or nbytes <= cap

    def reserve(self, nbytes: int, tenant: str | None = None) -> None:
        self.used_bytes += nbytes
        if tenant is not None:
            self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + nbytes

    def release(self, nbytes: int, tenant: str | None = None) -> None:
        self.used_bytes -= nbytes
        if self.used_bytes < 0:  # a bookkeeping bug must not hide as negative free space
            raise AssertionError("memory budget released more bytes than were reserved")
        if tenant is not None:
            left = self._by_tenant.get(tenant, 0) - nbytes
            if left < 0:
                raise AssertionError(f"tenant {tenant} released more bytes than it reserved")
            if left:
                self._by_tenant[tenant] = left
            else:
                self._by_tenant.pop(tenant, None)
