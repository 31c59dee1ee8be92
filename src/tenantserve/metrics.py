"""Every metric, bound to an injected CollectorRegistry; names follow SageMaker MME (DESIGN §5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Loads run from milliseconds (a warm disk copy) to minutes (a large S3 object).
_LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """The server's metrics. One instance per app; tests pass a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.invocations = Counter(
            "tenantserve_invocations",
            "Inference requests answered, by protocol and HTTP status code.",
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
            "Requests refused before inference, by reason.",
            ["reason"],
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
        self.in_flight = Gauge(
            "tenantserve_requests_in_flight", "Requests admitted and not yet answered.", registry=r
        )

    def watch_cache(self, read: Callable[[], CacheSnapshot]) -> None:
        """Report cache occupancy computed at scrape time (never a stale copy)."""
        self.registry.register(_CacheCollector(read))


class CacheSnapshot:
    """Occupancy numbers the cache hands to the scrape-time collector."""

    __slots__ = ("budget_bytes", "loaded_models", "pinned_bytes", "used_bytes")

    def __init__(
        self, *, loaded_models: int, used_bytes: int, budget_bytes: int, pinned_bytes: int
    ) -> None:
        self.loaded_models = loaded_models
        self.used_bytes = used_bytes
        self.budget_bytes = budget_bytes
        self.pinned_bytes = pinned_bytes


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

    def describe(self) -> Iterable[Metric]:
        return []
