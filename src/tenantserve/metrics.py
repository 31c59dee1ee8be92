"""Every metric, bound to an injected CollectorRegistry; names follow SageMaker MME."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Loads run from milliseconds (a warm disk copy) to minutes (a large S3 object).
# A fast load (a mapped ORT-format file) or unload takes well under a millisecond.
_LOAD_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The server's metrics. One instance per app; tests pass a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, top_tenants: int = 10) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tenants = TenantLabels(top_tenants, on_demote=self._forget_tenant)
        self.invocations = Counter(
            "tenantserve_invocations",
            "Inference requests answered, by protocol and status code (HTTP's number, gRPC's "
            "name).",
            ["protocol", "code"],
            registry=r,
        )
        self.cache_hits = Counter(
            "tenantserve_model_cache_hits", "Requests whose model was resident.", registry=r
        )
        self.cache_misses = Counter(
            "tenantserve_model_cache_misses",
            "Requests whose model had to be loaded (or waited on a load).",
            registry=r,
        )
        self.evictions = Counter(
            "tenantserve_model_evictions", "Models evicted to make room.", registry=r
        )
        self.load_failures = Counter(
            "tenantserve_model_load_failures", "Model loads that failed.", registry=r
        )
        self.rejected = Counter(
            "tenantserve_rejected_requests",
            "Requests refused before inference, by reason and tenant (the top tenants by "
            "traffic by name, the rest as 'other').",
            ["reason", "tenant"],
            registry=r,
        )
        self.loading_wait = Histogram(
            "tenantserve_model_loading_wait_seconds",
            "Time a request waited for its model to load.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.loading = Histogram(
            "tenantserve_model_loading_seconds",
            "Time to turn a local artifact into a resident model.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.load_slot = Histogram(
            "tenantserve_model_load_slot_seconds",
            "Time a load held its slot: fetching, making room, loading, and waiting for the "
            "server's threads between them (what a load costs the queue of loads).",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.downloading = Histogram(
            "tenantserve_model_downloading_seconds",
            "Time to fetch an artifact from the store to local disk.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.unloading = Histogram(
            "tenantserve_model_unloading_seconds",
            "Time to release an unloaded or evicted model.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.request = Histogram(
            "tenantserve_request_seconds",
            "Whole request time inside the server, by protocol.",
            ["protocol"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "tenantserve_inference_seconds",
            "Time inside model.predict.",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "tenantserve_batch_size",
            "Requests answered by one model run (1: alone; more: a dynamic batch).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_models = Histogram(
            "tenantserve_batch_models",
            "Models in one batched run (more than 1: tenants' heads on one shared base).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "tenantserve_requests_in_flight", "Requests admitted and not yet answered.", registry=r
        )

    def watch_cache(self, read: Callable[[], CacheSnapshot]) -> None:
        """Report cache occupancy computed at scrape time (never a stale copy)."""
        self.registry.register(_CacheCollector(read))

    def reject(self, reason: str, tenant: str) -> None:
        """Count a request refused before inference (``reason`` one of :data:`REJECT_REASONS`)."""
        self.rejected.labels(reason, self.tenants.label_of(tenant)).inc()

    def watch_scheduling(self, read: Callable[[], SchedulingSnapshot]) -> None:
        """Report queue depths and per-tenant requests in flight, read at scrape time."""
        self.registry.register(_SchedulingCollector(read, self.tenants))

    def _forget_tenant(self, tenant: str) -> None:
        # A tenant that left the top K keeps no series of its own: cardinality stays K + 1.
        for reason in REJECT_REASONS:
            self.rejected.remove(reason, tenant)


REJECT_REASONS = (
    "queue_full",
    "timeout",
    "tenant_rate",
    "tenant_concurrency",
    "load_queue_full",
    "tenant_loads",
)
"""Why a request was refused before inference: the ``reason`` label of ``rejected``."""


class TenantLabels:
    """A tenant's metric label: its own name while among the top ``k`` by traffic, else "other".

    Counts decay (halve every ``_DECAY_EVERY`` requests) so yesterday's heavy tenant gives its
    label up; a newcomer must count twice the smallest labelled tenant to take its place, so
    labels do not flap between two tenants of similar traffic.
    """

    OTHER = "other"

    def __init__(self, k: int, *, on_demote: Callable[[str], None] | None = None) -> None:
        self._k = k
        self._on_demote = on_demote
        self._counts: dict[str, float] = {}
        self._labelled: set[str] = set()
        self._seen = 0

    def observe(self, tenant: str) -> None:
        """One request from ``tenant``."""
        self._counts[tenant] = self._counts.get(tenant, 0.0) + 1.0
        self._seen += 1
        if self._seen % _DECAY_EVERY == 0:
            self._decay()
        if tenant in self._labelled or self._k <= 0:
            return
        if len(self._labelled) < self._k:
            self._labelled.add(tenant)
            return
        weakest = min(self._labelled, key=lambda t: self._counts.get(t, 0.0))
        if self._counts[tenant] > 2 * self._counts.get(weakest, 0.0):
            self._labelled.discard(weakest)
            self._labelled.add(tenant)
            if self._on_demote is not None:
                self._on_demote(weakest)

    def label_of(self, tenant: str) -> str:
        return tenant if tenant in self._labelled else self.OTHER

    def _decay(self) -> None:
        # Halving keeps the order and bounds the table: tenants that stopped sending fade out.
        self._counts = {t: c / 2 for t, c in self._counts.items() if c >= 1 or t in self._labelled}


_DECAY_EVERY = 10_000


class SchedulingSnapshot:
    """Queue depths (by queue name) and requests in flight (by tenant), for the scrape."""

    __slots__ = ("in_flight_by_tenant", "queued")

    def __init__(
        self, *, queued: Mapping[str, int], in_flight_by_tenant: Mapping[str, int]
    ) -> None:
        self.queued = queued
        self.in_flight_by_tenant = in_flight_by_tenant


class _SchedulingCollector(Collector):
    def __init__(self, read: Callable[[], SchedulingSnapshot], tenants: TenantLabels) -> None:
        self._read = read
        self._tenants = tenants

    def collect(self) -> Iterable[Metric]:
        snap = self._read()
        depth = GaugeMetricFamily(
            "tenantserve_queue_depth",
            "Requests waiting, by queue: admission (for a slot), predict (for a thread), "
            "load (distinct models waiting to load).",
            labels=["queue"],
        )
        for queue, n in sorted(snap.queued.items()):
            depth.add_metric([queue], n)
        yield depth
        by_label: dict[str, int] = {}
        for tenant, n in snap.in_flight_by_tenant.items():
            label = self._tenants.label_of(tenant)
            by_label[label] = by_label.get(label, 0) + n
        in_flight = GaugeMetricFamily(
            "tenantserve_tenant_requests_in_flight",
            "Requests admitted and not yet answered, by tenant (top tenants, the rest 'other').",
            labels=["tenant"],
        )
        for label, n in sorted(by_label.items()):
            in_flight.add_metric([label], n)
        yield in_flight

    def describe(self) -> Iterable[Metric]:
        return []


class CacheSnapshot:
    """Occupancy numbers the cache hands to the scrape-time collector."""

    __slots__ = (
        "budget_bytes", "loaded_models", "logical_bytes", "pinned_bytes", "queued_loads",
        "shared_bytes", "used_bytes",
    )  # fmt: skip

    def __init__(
        self,
        *,
        loaded_models: int,
        used_bytes: int,
        budget_bytes: int,
        pinned_bytes: int,
        queued_loads: int = 0,
        shared_bytes: int = 0,
        logical_bytes: int = 0,
    ) -> None:
        self.loaded_models = loaded_models
        self.shared_bytes = shared_bytes
        self.logical_bytes = logical_bytes
        self.used_bytes = used_bytes
        self.budget_bytes = budget_bytes
        self.pinned_bytes = pinned_bytes
        self.queued_loads = queued_loads


class _CacheCollector(Collector):
    def __init__(self, read: Callable[[], CacheSnapshot]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        snap = self._read()
        yield GaugeMetricFamily(
            "tenantserve_loaded_models", "Models resident in memory.", value=snap.loaded_models
        )
        yield GaugeMetricFamily(
            "tenantserve_memory_used_bytes",
            "Bytes held by resident and loading models, as measured at load.",
            value=snap.used_bytes,
        )
        yield GaugeMetricFamily(
            "tenantserve_memory_budget_bytes", "The configured memory budget.",
            value=snap.budget_bytes,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tenantserve_memory_pinned_bytes", "Bytes held by pinned models.",
            value=snap.pinned_bytes,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "tenantserve_memory_shared_bytes",
            "Bytes of parts shared between models (a common encoder), counted once.",
            value=snap.shared_bytes,
        )
        yield GaugeMetricFamily(
            "tenantserve_memory_sharing_ratio",
            "Bytes the resident models would hold each on its own, over bytes held (1 = none).",
            value=snap.logical_bytes / snap.used_bytes if snap.used_bytes else 1.0,
        )

    def describe(self) -> Iterable[Metric]:
        return []
