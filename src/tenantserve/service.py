"""InferenceService: the server's one face to its protocols — requests (each a pipeline Call),
lifecycle and readiness, management (load, unload, pin) and what status pages read."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence

from tenantserve.activity import Activity
from tenantserve.cache.model_cache import ModelCache
from tenantserve.cache.version_table import VersionTable
from tenantserve.errors import ModelNotFound, TenantServeError
from tenantserve.metrics import Metrics, SchedulingSnapshot
from tenantserve.pipeline import Call, Pipeline
from tenantserve.reports import (
    RepositoryEntry,
    ServerStatus,
    TenantStatus,
    repository_entries,
    tenant_rows,
)
from tenantserve.scheduling.admission import Admission
from tenantserve.scheduling.batcher import Batcher
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.grace import GracePeriod
from tenantserve.scheduling.tenant_limits import TenantLimits, TenantQuotas
from tenantserve.store.base import ModelStore
from tenantserve.store.patterns import is_pattern, resolve_patterns
from tenantserve.store.versions import DEFAULT_ALIAS
from tenantserve.types import ModelId, ModelMetadata, ModelRef, ModelStatus, ResolvedModel

log = logging.getLogger(__name__)


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
        max_batch_size: int = 1,
        max_batch_delay_s: float = 0.0,
        shutdown_grace_s: float = 30.0,
    ) -> None:
        """``predictor`` runs predictions in fair turns between tenants on ``executor``'s
        compute pool, up to ``max_batch_size`` requests of one model at a time (a batch may
        wait ``max_batch_delay_s`` for company); ``quotas`` holds tenants to their limits (none
        when ``None``); a prediction may run ``predict_timeout_s``; shutdown takes
        ``shutdown_grace_s`` at most, counted from :meth:`stop_accepting`."""
        self._cache = cache
        self._store = store
        self._admission = admission
        self._executor = executor
        self._metrics = metrics
        self._quotas = quotas or TenantQuotas(TenantLimits(), metrics=metrics)
        self._activity = activity if activity is not None else Activity()
        self._versions = VersionTable(
            lambda model_id: executor.run_io(store.versions, model_id), cache.is_resident
        )
        self._pipeline = Pipeline(
            quotas=self._quotas,
            admission=admission,
            cache=cache,
            batcher=Batcher(
                predictor,
                metrics=metrics,
                max_size=max_batch_size,
                delay_s=max_batch_delay_s,
                timeout_s=predict_timeout_s,
            ),
            executor=executor,
            activity=self._activity,
            metrics=metrics,
            versions=self._versions,
        )
        # One inference of a reference: ``async with service.call(ref) as call`` names its
        # version and admits it (quotas, admission, the load queue: refused before its body
        # is read), then ``await call.predict(inputs)`` answers it (tenantserve.pipeline). The
        # pipeline's own method, bound here: the request path does not pass through this class.
        self.call: Callable[[ModelRef | ResolvedModel], Call] = self._pipeline.call
        self._grace = GracePeriod(shutdown_grace_s)
        self._predictor = predictor
        self._accepting = False
        self._store_problem: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        """Readiness goes false first on shutdown, so balancers drain before we stop.

        The first call starts the shutdown grace period.
        """
        self._grace.begin()
        self._accepting = False

    @property
    def shutdown_grace_s(self) -> float:
        return self._grace.grace_s

    def shutdown_left_s(self) -> float:
        """Seconds left of the shutdown grace period (all of it until shutdown begins)."""
        return self._grace.left_s()

    async def close(self) -> None:
        """Shut down within the grace period: wait for stopped runs to let go of their
        models, unload every model (loads in flight first), then stop the thread pools.

        What still runs when the period ends (a load ONNX Runtime cannot interrupt) is left
        to the process exit, so shutdown never outlasts its grace period.
        """
        self.stop_accepting()
        try:
            async with asyncio.timeout(self._grace.close_left_s()):
                if self._pipeline.lingering:
                    await asyncio.gather(*self._pipeline.lingering, return_exceptions=True)
                await self._cache.close()
        except TimeoutError:
            log.warning(
                "shutdown grace period (%gs) over with model loads or unloads still running; "
                "exiting without waiting for them", self._grace.grace_s,
            )  # fmt: skip
        if not self._executor.shutdown(timeout_s=self._grace.close_left_s()):
            log.warning("exiting with a model load or prediction still running")

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

    # -- requests --------------------------------------------------------------------------

    def refuses_at_once(self, model_id: ModelId) -> bool:
        """Whether an inference of ``model_id`` arriving now would be refused at once for
        capacity (every slot taken, the queue full, no longer queue to shed for its tenant):
        counted as that refusal when so, for the HTTP layer to answer it cheaply."""
        tenant = model_id.tenant
        if not self._admission.would_refuse(tenant):
            return False
        self._metrics.tenants.observe(tenant)
        self._activity.record_request(
            model_id, latency_s=0.0, hit=False, outcome="rejected", detail="Overloaded"
        )
        return True

    def refuses_first_calls(self, tenant: str, starting: int = 0) -> bool:
        """Whether the load queue refuses any new load of ``tenant`` now (``starting`` more
        first calls on their way to it): the tenant's state, like :meth:`refuses_at_once`'s,
        asked by the HTTP layer before it checks a key."""
        return self._pipeline.refuses_new_loads(tenant, starting)

    def unread(self, model_id: ModelId) -> bool:
        """Whether ``model_id``'s versions were never read: an inference of it is a first
        call, bound for the load queue."""
        return not self._pipeline.versions.knows(model_id)

    def refusal_before_read(self, ref: ModelRef, starting: int = 0) -> TenantServeError | None:
        """What an inference of ``ref`` arriving now is told before anything is read for it
        (its model's versions never read, and the load queue full for any of them, counting
        ``starting`` more first calls on their way to it: counted as that refusal), or
        ``None`` when it goes the usual way: for the HTTP layer to answer it from the
        request's head."""
        if ref.unversioned_answers and self._cache.is_resident(ref.model_id):
            return None
        try:
            self._pipeline.refuse_unread(ref.model_id, starting=starting)
        except TenantServeError as exc:
            return exc
        return None

    async def resolve(self, ref: ModelRef, *, fresh: bool = False) -> ResolvedModel:
        """The version ``ref`` names (docs/versions.md): ``acme/macros`` → its ``stable``
        alias or highest version, ``acme/macros@2`` → version 2, ``@canary`` → that alias's;
        the result's ``key`` is the id to call, load or unload. ``fresh`` reads the store's
        versions now (an operator's load sees a version uploaded a moment ago).

        Raises:
            ModelNotFound: no such version or alias, naming those the model has.
        """
        if fresh:
            await self._versions.versions(ref.model_id, fresh=True)
        return await self._versions.resolve(ref)

    async def versions_of(self, model: ResolvedModel) -> list[str]:
        """Every version of the model ``model`` is one of (``["1"]`` when unversioned)."""
        if model.key == model.name:
            return [model.version]
        found = await self._versions.versions(model.name)
        return [str(v) for v in found.versions] if found is not None else [model.version]

    async def promote(
        self, model_id: ModelId, version: int, alias: str = DEFAULT_ALIAS
    ) -> ResolvedModel:
        """Roll ``alias`` of ``model_id`` (the one its bare id follows by default) to
        ``version``: load that version unless resident, then point the alias at it. Requests
        resolved before keep the version they had and finish on it; the old version stays
        resident until evicted like any model, so nothing waits on a load either way.

        Raises:
            ModelNotFound: no numbered versions, or not that one.
            LoadFailed, InsufficientMemory, …: the version did not load; the alias is unmoved.
        """

        async def load(target: ResolvedModel) -> None:
            await self._cache.load(target.key)

        return await self._versions.promote(model_id, version, alias, prepare=load)

    def scheduling(self) -> SchedulingSnapshot:
        """Queue depths and per-tenant requests in flight, for the metrics scrape."""
        queued = {
            "admission": self._admission.queued,
            "predict": self._predictor.queued,
            "load": self._cache.snapshot().queued_loads,
        }
        return SchedulingSnapshot(queued=queued, in_flight_by_tenant=dict(self._pipeline.in_flight))

    async def metadata(self, model_id: ModelId) -> ModelMetadata:
        """A model's signature, read from its graph (it loads if needed): admitted as an
        inference is, quotas and load queue included, but not counted as one."""
        async with self._pipeline.call(ResolvedModel.unversioned(model_id), counted=False) as call:
            return await call.metadata()

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

        A versioned model's name (``acme/macros``, ``acme/macros@2``) stands for the version it
        serves now; patterns match versions by path (``acme/macros/*``). A name that matches
        nothing raises (``serve`` checks them all before it listens); a model that exists but
        fails to load is logged and left out: the others serve.

        Raises:
            ModelNotFound: a name matches no model (``what`` and the nearest ids say which),
                or no such version.
        """
        named = [
            name if is_pattern(name) else (await self.resolve(ModelRef.parse(name))).key.value
            for name in patterns
        ]
        listed = await self._executor.run_io(resolve_patterns, named, self._store.list, what=what)
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
        return tenant_rows(
            self._cache.status(), self._activity.tenants(), self._quotas.limits,
            self._pipeline.in_flight, self._cache.tenant_memory,
        )  # fmt: skip

    def status_of(self, model_id: ModelId) -> ModelStatus:
        for status in self._cache.status():
            if status.model_id == model_id.value:
                return status
        raise ModelNotFound(f"model {model_id} is not loaded")

    async def index(self) -> list[RepositoryEntry]:
        """Every model in the store, with its state here; a versioned model has one entry
        per version (``acme/macros`` version ``2`` is the artifact ``acme/macros/2``)."""
        ids = await self._executor.run_io(self._store.list, "")
        return repository_entries(ids, self._cache.status())
