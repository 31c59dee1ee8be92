"""InferenceService: infer / load / unload / status — the whole pipeline, readable in one screen."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from prometheus_client import Histogram

from tenantserve.activity import Activity, ActivitySnapshot
from tenantserve.cache.model_cache import ModelCache
from tenantserve.errors import (
    InvalidInput,
    ModelNotFound,
    PredictFailed,
    PredictTimedOut,
    TenantServeError,
)
from tenantserve.metrics import CacheSnapshot, Metrics, SchedulingSnapshot
from tenantserve.runtimes import LoadedModel
from tenantserve.runtimes.run_stop import RunStop
from tenantserve.scheduling.admission import Admission, Ticket
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits, TenantQuotas
from tenantserve.store.base import ModelStore
from tenantserve.store.patterns import resolve_patterns
from tenantserve.types import ModelId, ModelMetadata, ModelStatus, Tensors, TensorSpec

log = logging.getLogger(__name__)

# Shutdown stops waiting this long before its grace period ends, so the process is gone
# before an orchestrator's kill arrives at the end of it.
_EXIT_MARGIN_S = 0.5


@dataclass(frozen=True, slots=True)
class RepositoryEntry:
    """One model of the store, with its residency (OIP repository index)."""

    model_id: str
    state: str  # "READY" | "LOADING" | "UNAVAILABLE"
    reason: str = ""


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


class InferenceService:
    """The protocol-neutral core: every protocol's routes call these methods and nothing else."""

    def __init__(
        self,
        *,
        cache: ModelCache,
        store: ModelStore,
        admission: Admission,
        executor: BoundedExecutor,
        metrics: Metrics,
        predictor: FairExecutor,
        quotas: TenantQuotas | None = None,
        activity: Activity | None = None,
        predict_timeout_s: float = math.inf,
        shutdown_grace_s: float = 30.0,
    ) -> None:
        """``predictor`` runs predictions in fair turns between tenants on ``executor``'s
        compute pool; ``quotas`` holds tenants to their limits (none when ``None``); a
        prediction may run ``predict_timeout_s``; shutdown takes ``shutdown_grace_s`` at most,
        counted from :meth:`stop_accepting`."""
        self._cache = cache
        self._store = store
        self._admission = admission
        self._executor = executor
        self._metrics = metrics
        self._predictor = predictor
        self._quotas = quotas or TenantQuotas(TenantLimits(), metrics=metrics)
        self._activity = activity if activity is not None else Activity()
        self._predict_timeout_s = predict_timeout_s
        self._shutdown_grace_s = shutdown_grace_s
        self._accepting = False
        self._store_problem: str | None = None
        self._stopping_since: float | None = None
        self._lingering: set[asyncio.Task[None]] = set()  # leases held for stopped runs

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        """Readiness goes false first on shutdown, so balancers drain before we stop.

        The first call starts the shutdown grace period.
        """
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
        self._accepting = False

    @property
    def shutdown_grace_s(self) -> float:
        return self._shutdown_grace_s

    def shutdown_left_s(self) -> float:
        """Seconds left of the shutdown grace period (all of it until shutdown begins)."""
        if self._stopping_since is None:
            return self._shutdown_grace_s
        return self._stopping_since + self._shutdown_grace_s - time.monotonic()

    async def close(self) -> None:
        """Shut down within the grace period: wait for stopped runs to let go of their
        models, unload every model (loads in flight first), then stop the thread pools.

        What still runs when the period ends (a load ONNX Runtime cannot interrupt) is left
        to the process exit, so shutdown never outlasts its grace period.
        """
        self.stop_accepting()
        try:
            async with asyncio.timeout(self._close_left_s()):
                if self._lingering:
                    await asyncio.gather(*self._lingering, return_exceptions=True)
                await self._cache.close()
        except TimeoutError:
            log.warning(
                "shutdown grace period (%gs) over with model loads or unloads still running; "
                "exiting without waiting for them", self._shutdown_grace_s,
            )  # fmt: skip
        if not self._executor.shutdown(timeout_s=self._close_left_s()):
            log.warning("exiting with a model load or prediction still running")

    def _close_left_s(self) -> float:
        return max(0.0, self.shutdown_left_s() - _EXIT_MARGIN_S)

    def live(self) -> bool:
        """Live while the process serves HTTP at all: loads and failed loads never change it."""
        return True

    def ready(self) -> bool:
        """Ready from the end of start-up (preloads done) until shutdown begins, while the
        store answers its check (a store that failed it is re-checked until it passes).

        Serving does not wait for any model to be loaded, and a model that fails to load makes
        only its own requests fail; per-model readiness is :meth:`is_resident`.
        """
        return self._accepting and self._store_problem is None

    @property
    def store_problem(self) -> str | None:
        """What the last store check found wrong, for the operator; ``None`` when it passed."""
        return self._store_problem

    @store_problem.setter
    def store_problem(self, problem: str | None) -> None:
        self._store_problem = problem

    # -- data plane ------------------------------------------------------------------------

    async def infer(
        self, model_id: ModelId, tensors: Tensors, *, outputs: Sequence[str] | None = None
    ) -> Tensors:
        """Run ``model_id`` on ``tensors``; loads the model on first use.

        Args:
            outputs: names of outputs to return; all when ``None``.
        Raises:
            TenantLimitExceeded, Overloaded, ModelNotFound, ModelNotReady, InsufficientMemory,
            LoadFailed, InvalidInput, PredictFailed.
        """
        async with self._admitted(model_id) as ticket:
            result = await self._leased_predict(model_id, ticket, lambda model: tensors)
        if outputs is None:
            return result
        unknown = [name for name in outputs if name not in result]
        if unknown:
            raise InvalidInput(
                f"unknown output {unknown[0]!r}; model {model_id} has outputs {sorted(result)}"
            )
        return {name: result[name] for name in outputs}

    async def infer_from(
        self, model_id: ModelId, decode: Callable[[tuple[TensorSpec, ...]], Tensors]
    ) -> Tensors:
        """Run ``model_id`` on what ``decode`` makes of its input signature; all outputs.

        For bodies that name no inputs (SageMaker's): one admission and one lease, where
        reading :meth:`metadata` first would lease twice and load outside admission.
        """
        async with self._admitted(model_id) as ticket:
            return await self._leased_predict(model_id, ticket, lambda model: decode(model.inputs))

    def refuse_early(self, model_id: ModelId) -> None:
        """Raise now what :meth:`infer` would raise at once (quotas, a full queue, a model that
        cannot start loading), so a refused request costs no body read or decode; the same
        checks run again in :meth:`infer`.

        Raises:
            TenantLimitExceeded, Overloaded, ModelNotReady, LoadFailed.
        """
        try:
            self._quotas.check(model_id.tenant)
            self._admission.check(model_id.tenant)
            self._cache.refuse_early(model_id)
        except TenantServeError:
            # Counted as a refusal in infer is: metrics' tenants, status events, hot lists.
            self._metrics.tenants.observe(model_id.tenant)
            with self._activity.request(model_id, hit=False):
                raise

    @asynccontextmanager
    async def _admitted(self, model_id: ModelId) -> AsyncIterator[Ticket]:
        """The tenant's own quotas first (429), then a slot in the server's admission (503).

        The whole request, lease and predict included, is timed and counted in the activity.
        """
        tenant = model_id.tenant
        self._metrics.tenants.observe(tenant)  # traffic decides which tenants metrics name
        hit = self._cache.is_resident(model_id)  # as it arrived, as X-Tenantserve-Cache says
        with self._activity.request(model_id, hit=hit), self._quotas.hold(tenant):
            async with self._admission.admit(tenant) as ticket:
                yield ticket

    async def _leased_predict(
        self, model_id: ModelId, ticket: Ticket, inputs: Callable[[LoadedModel], Tensors]
    ) -> Tensors:
        """Lease the model and predict on a compute thread in the tenant's fair turn.

        Dropped unrun if its queue time ran out. A run past ``predict_timeout_s``, or whose
        caller left, is told to stop; while its thread still holds the model, the lease passes
        to a task that ends it when the thread lets go, so no model is closed under a run.
        """
        async with AsyncExitStack() as lease:
            model = await lease.enter_async_context(self._cache.lease(model_id))
            run = _Run(model, inputs(model), self._metrics.inference)
            try:
                return await self._predictor.run_until(
                    ticket.deadline(), model_id.tenant, run,
                    timeout_s=self._predict_timeout_s, key=model_id.value,
                )  # fmt: skip
            except (PredictTimedOut, asyncio.CancelledError) as exc:
                if run.stop():
                    self._end_lease_after(run, lease.pop_all())
                if isinstance(exc, PredictTimedOut):
                    log.warning("%s; its run was told to stop", exc)
                raise

    def _end_lease_after(self, run: _Run, lease: AsyncExitStack) -> None:
        async def end() -> None:
            await run.released
            await lease.aclose()

        task = asyncio.get_running_loop().create_task(end())
        self._lingering.add(task)  # hold a reference until done, or the task may be collected
        task.add_done_callback(self._lingering.discard)

    def scheduling(self) -> SchedulingSnapshot:
        """Queue depths and per-tenant requests in flight, for the metrics scrape."""
        queued = {
            "admission": self._admission.queued,
            "predict": self._predictor.queued,
            "load": self._cache.snapshot().queued_loads,
        }
        return SchedulingSnapshot(
            queued=queued, in_flight_by_tenant=self._admission.in_flight_by_tenant()
        )

    async def metadata(self, model_id: ModelId) -> ModelMetadata:
        """Signature of a model (loads it if needed: the signature is read from the graph)."""
        async with self._cache.lease(model_id, counted=False) as model:
            return ModelMetadata(
                model_id=model_id.value,
                platform=model.platform,
                inputs=model.inputs,
                outputs=model.outputs,
                labels=self._cache.labels_of(model_id),
            )

    def is_resident(self, model_id: ModelId) -> bool:
        return self._cache.is_resident(model_id)

    # -- management ------------------------------------------------------------------------

    async def load(
        self, model_id: ModelId, *, pin: bool = False, exist_ok: bool = True, reload: bool = False
    ) -> None:
        """Load now (and optionally pin). ``exist_ok=False`` raises ``ModelAlreadyLoaded``.

        ``reload`` loads a resident model again from the store beside the serving copy and
        swaps it in once loaded; if that fails, the error is raised and the old copy serves.
        """
        await self._cache.load(model_id, pin=pin, exist_ok=exist_ok, reload=reload)

    async def preload(
        self, patterns: Sequence[str], *, pin: bool = False, what: str = "--preload"
    ) -> list[ModelId]:
        """Load (and with ``pin``, pin) the models named by ids or glob patterns (``acme/*``)
        at start-up; returns the ids that loaded.

        A name that matches nothing raises (``serve`` checks them all before it listens); a
        model that exists but fails to load is logged and left out: the others serve.

        Raises:
            ModelNotFound: a name matches no model (``what`` and the nearest ids say which).
        """
        listed = await self._executor.run_io(
            resolve_patterns, patterns, self._store.list, what=what
        )
        loaded = []
        for model_id in listed:
            try:
                await self.load(model_id, pin=pin)
            except TenantServeError as exc:
                log.error("%s %s: %s; serving the other models", what, model_id, exc)
            else:
                loaded.append(model_id)
        return loaded

    async def unload(self, model_id: ModelId) -> None:
        """Unload a resident model once its in-flight requests finish; unpins it first."""
        await self._cache.unload(model_id)

    def pin(self, model_id: ModelId, pinned: bool = True) -> None:
        self._cache.pin(model_id, pinned)

    def resident(self) -> list[ModelStatus]:
        return self._cache.status()

    def status(self) -> ServerStatus:
        return ServerStatus(
            self.ready(),
            self._store.url,
            self._store_problem,
            self._cache.snapshot(),
            self._cache.status(),
            self._activity.snapshot(),
        )

    def tenants(self) -> list[TenantStatus]:
        """Every tenant that holds a model, sent a request or has limits of its own, by name."""
        held: dict[str, int] = {}
        for model in self._cache.status():
            tenant = ModelId.parse(model.model_id).tenant
            held[tenant] = held.get(tenant, 0) + 1
        seen = {row.tenant: row for row in self._activity.tenants()}
        named = set((self._quotas.limits.tenants or {}).keys())
        in_flight = self._admission.in_flight_by_tenant()
        rows = []
        for tenant in sorted(held.keys() | seen.keys() | named):
            nbytes, cap = self._cache.tenant_memory(tenant)
            activity = seen.get(tenant)
            rows.append(
                TenantStatus(
                    tenant, held.get(tenant, 0), nbytes, cap, in_flight.get(tenant, 0),
                    activity.requests if activity else 0, activity.errors if activity else 0,
                    activity.rejected if activity else 0,
                    activity.last_request_s if activity else None,
                    self._quotas.limits.of(tenant),
                )
            )  # fmt: skip
        return rows

    def status_of(self, model_id: ModelId) -> ModelStatus:
        for status in self._cache.status():
            if status.model_id == model_id.value:
                return status
        raise ModelNotFound(f"model {model_id} is not loaded")

    async def index(self) -> list[RepositoryEntry]:
        """Every model in the store, with its state here."""
        ids = await self._executor.run_io(self._store.list, "")
        resident = {s.model_id: s for s in self._cache.status()}
        entries = []
        for raw in ids:
            status = resident.get(raw)
            state = "UNAVAILABLE" if status is None else status.state.upper()
            entries.append(RepositoryEntry(raw, state))
        return entries


class _Run:
    """One prediction handed to a compute thread: stoppable, and known when it lets go."""

    def __init__(self, model: LoadedModel, tensors: Tensors, timer: Histogram) -> None:
        self._model = model
        self._tensors = tensors
        self._timer = timer
        self._stop = RunStop()
        self._lock = threading.Lock()  # orders "started" against "stopped" across threads
        self._started = False
        self._loop = asyncio.get_running_loop()
        self.released: asyncio.Future[None] = self._loop.create_future()

    def __call__(self) -> Tensors:
        """On the compute thread."""
        with self._lock:
            if self._stop.stopped:  # its caller left before a thread took it
                raise PredictFailed("the run was stopped before it started")
            self._started = True
        started = time.perf_counter()
        try:
            with self._stop.running():
                return self._model.predict(self._tensors)
        finally:
            self._timer.observe(time.perf_counter() - started)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                self._loop.call_soon_threadsafe(self._let_go)

    def stop(self) -> bool:
        """Tell the run to stop (on the loop). Returns whether a thread still holds the model:
        then :attr:`released` completes when it lets go."""
        self._stop.stop()
        with self._lock:
            return self._started and not self.released.done()

    def _let_go(self) -> None:
        if not self.released.done():
            self.released.set_result(None)
