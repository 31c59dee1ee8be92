"""What the status pages and the repository index read, as records, and how they are made from
the parts' own snapshots (the service gathers them; nothing here holds state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tenantserve.activity import ActivitySnapshot
from tenantserve.activity.tenants import TenantActivity
from tenantserve.metrics import CacheSnapshot
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits
from tenantserve.store.versions import split_version
from tenantserve.types import ModelId, ModelStatus


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One model of the store, with its residency (OIP repository index)."""

    model_id: str
    state: str  # "READY" | "LOADING" | "UNAVAILABLE"
    reason: str = ""
    version: str = "1"


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What ``/v1/status`` and ``/ui`` show: memory, resident models, recent activity."""

    ready: bool
    store_url: str
    store_problem: str | None
    """Why the store cannot be used (for the operator), or ``None`` while it answers."""
    memory: CacheSnapshot
    models: list[ModelStatus]
    activity: ActivitySnapshot


@dataclass(frozen=True, slots=True)
class TenantStatus:
    """One tenant as ``/v1/tenants`` shows it: what it holds, what it sent, what it may do."""

    tenant: str
    models: int
    nbytes: int
    memory_cap_bytes: int | None
    in_flight: int
    requests: int
    errors: int
    rejected: int
    last_request_s: float | None
    limits: TenantLimit


def tenant_rows(
    models: list[ModelStatus],
    activity: list[TenantActivity],
    limits: TenantLimits,
    in_flight: Mapping[str, int],
    memory_of: Callable[[str], tuple[int, int | None]],
) -> list[TenantStatus]:
    """Every tenant that holds one of ``models``, sent a request or has limits of its own, by
    name; ``memory_of(tenant)`` is (the bytes it holds, its cap or ``None``)."""
    held: dict[str, int] = {}
    for model in models:
        tenant = ModelId.parse(model.model_id).tenant
        held[tenant] = held.get(tenant, 0) + 1
    seen = {row.tenant: row for row in activity}
    named = set((limits.tenants or {}).keys())
    rows = []
    for tenant in sorted(held.keys() | seen.keys() | named):
        nbytes, cap = memory_of(tenant)
        active = seen.get(tenant)
        rows.append(
            TenantStatus(
                tenant, held.get(tenant, 0), nbytes, cap, in_flight.get(tenant, 0),
                active.requests if active else 0, active.errors if active else 0,
                active.rejected if active else 0, active.last_request_s if active else None,
                limits.of(tenant),
            )
        )  # fmt: skip
    return rows


def repository_entries(ids: Iterable[str], resident: list[ModelStatus]) -> list[RepositoryEntry]:
    """Every model id of the store with its state here; a versioned model has one entry per
    version (``acme/macros`` version ``2`` is the artifact ``acme/macros/2``)."""
    by_id = {s.model_id: s for s in resident}
    entries = []
    for raw in ids:
        status = by_id.get(raw)
        state = "UNAVAILABLE" if status is None else status.state.upper()
        name, version = split_version(raw)
        entries.append(RepositoryEntry(name, state, version=version))
    return entries
