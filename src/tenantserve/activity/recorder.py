"""Activity: fed by every request and every cache event; read by ``/v1/status`` and ``/ui``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from prometheus_client import CollectorRegistry

from tenantserve.activity.events import CacheEvent, Event, EventLog
from tenantserve.activity.hot import HotEntry, HotList
from tenantserve.activity.model_labels import ModelLabels
from tenantserve.activity.series import RequestSeries, SeriesPoint, WindowSummary
from tenantserve.activity.tenants import TenantActivity, TenantLedger
from tenantserve.errors import Overloaded
from tenantserve.types import ModelId


@dataclass(frozen=True, slots=True)
class Totals:
    """Counts since the server started."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    rejected: int = 0
    loads: int = 0
    evictions: int = 0
    unloads: int = 0
    load_failures: int = 0


@dataclass(frozen=True, slots=True)
class ActivitySnapshot:
    """Everything :class:`Activity` knows, copied at one instant."""

    started_s: float
    now_s: float
    totals: Totals
    bucket_s: float
    series: list[SeriesPoint]
    window: WindowSummary
    events: list[Event]
    hot_window_s: float
    hot_models: list[HotEntry]
    hot_tenants: list[HotEntry]
    labelled_models: int


class Activity:
    """Recent activity in bounded memory: a time series ring, an event ring, hot lists.

    Every structure is bounded whatever the number of models: the series by its bucket
    count, events by the ring size, hot lists and per-model metric labels by space-saving
    counters. One lock guards it all (the event loop writes; a status read may come from
    any thread).

    Args:
        registry: where the per-model metrics go; ``None`` leaves them out.
        model_label_top_k: models that get a ``model`` label of their own (the rest: other).
        clock: wall-clock seconds, for tests.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        model_label_top_k: int = 10,
        bucket_s: float = 5.0,
        buckets: int = 120,
        max_events: int = 200,
        hot_capacity: int = 64,
        hot_window_s: float = 300.0,
        top_n: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._top_n = top_n
        self._lock = threading.Lock()
        self._series = RequestSeries(bucket_s=bucket_s, buckets=buckets)
        self._events = EventLog(max_events)
        self._hot_models = HotList(capacity=hot_capacity, window_s=hot_window_s)
        self._hot_tenants = HotList(capacity=hot_capacity, window_s=hot_window_s)
        self._labels = (
            ModelLabels(registry, top_k=model_label_top_k) if registry is not None else None
        )
        self._tenants = TenantLedger()
        self._totals: dict[str, int] = dict.fromkeys(Totals.__slots__, 0)
        self._started_s = clock()

    def request(self, model_id: ModelId, *, hit: bool) -> _Tracked:
        """``with activity.request(model, hit=…):`` times and counts one inference.

        ``hit``: was the model resident as the request arrived (the ``X-Tenantserve-Cache``
        meaning). An :class:`Overloaded` escaping the block is a rejection; a cancellation
        (the client went away) is neither a success nor an error of ours.
        """
        return _Tracked(self, model_id, hit)

    def record_request(
        self, model_id: ModelId, *, latency_s: float, hit: bool, outcome: str = "ok",
        detail: str = "",
    ) -> None:  # fmt: skip
        """Count a finished request: ``outcome`` is ok, error, rejected or cancelled."""
        now_s = self._clock()
        rejected = outcome == "rejected"
        error = outcome == "error"
        # A rejected request never looked its model up: it is neither a hit nor a miss.
        looked_up: bool | None = None if rejected else hit
        with self._lock:
            totals = self._totals
            totals["requests"] += 1
            totals["errors"] += error
            totals["rejected"] += rejected
            if looked_up is not None:
                totals["hits" if looked_up else "misses"] += 1
            self._series.record(
                now_s, latency_s=latency_s, hit=looked_up, error=error, rejected=rejected
            )
            miss = looked_up is False
            for hot, key in (
                (self._hot_models, model_id.value),
                (self._hot_tenants, model_id.tenant),
            ):
                hot.record(key, now_s, miss=miss, error=error, rejected=rejected)
            self._tenants.record(model_id.tenant, now_s, error=error, rejected=rejected)
            if rejected:
                self._events.add(now_s, "rejected", model_id.value, detail=detail)
            if self._labels is not None:
                self._labels.observe(model_id.value, latency_s, now_s)

    def cache_event(self, event: CacheEvent) -> None:
        """The model cache's event sink."""
        total = {"load": "loads", "evict": "evictions", "unload": "unloads",
                 "load_failed": "load_failures"}[event.kind]  # fmt: skip
        with self._lock:
            self._totals[total] += 1
            self._events.add(
                self._clock(), event.kind, event.model_id, nbytes=event.nbytes,
                seconds=event.seconds, detail=event.detail,
            )  # fmt: skip

    def tenants(self) -> list[TenantActivity]:
        """Every tenant that sent a request (within the ledger's bound), quietest first."""
        with self._lock:
            return self._tenants.rows()

    def snapshot(self, *, max_events: int = 50) -> ActivitySnapshot:
        now_s = self._clock()
        with self._lock:
            return ActivitySnapshot(
                started_s=self._started_s,
                now_s=now_s,
                totals=Totals(**self._totals),
                bucket_s=self._series.bucket_s,
                series=self._series.points(now_s),
                window=self._series.summary(now_s),
                events=self._events.newest(max_events),
                hot_window_s=self._hot_models.window_s,
                hot_models=self._hot_models.top(self._top_n, now_s),
                hot_tenants=self._hot_tenants.top(self._top_n, now_s),
                labelled_models=len(self._labels.labelled) if self._labels is not None else 0,
            )


class _Tracked:
    """The context manager :meth:`Activity.request` returns (a class: cheaper than a generator)."""

    __slots__ = ("_activity", "_hit", "_model_id", "_started")

    def __init__(self, activity: Activity, model_id: ModelId, hit: bool) -> None:
        self._activity = activity
        self._model_id = model_id
        self._hit = hit
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        outcome, detail = "ok", ""
        if isinstance(exc, Overloaded):
            outcome, detail = "rejected", type(exc).__name__
        elif isinstance(exc, asyncio.CancelledError):
            outcome = "cancelled"
        elif exc is not None:
            outcome = "error"
        self._activity.record_request(
            self._model_id, latency_s=time.perf_counter() - self._started, hit=self._hit,
            outcome=outcome, detail=detail,
        )  # fmt: skip
