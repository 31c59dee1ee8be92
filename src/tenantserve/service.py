"""InferenceService: infer / load / unload / status — the whole pipeline, readable in one screen."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tenantserve.activity import Activity, ActivitySnapshot
from tenantserve.cache.model_cache import ModelCache
from tenantserve.errors import InvalidInput, ModelNotFound
from tenantserve.metrics import CacheSnapshot, Metrics, SchedulingSnapshot
from tenantserve.runtimes import LoadedModel
from tenantserve.scheduling.admission import Admission, Ticket
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.tenant_limits import TenantLimits, TenantQuotas
from tenantserve.store.base import ModelStore
from tenantserve.types import ModelId, ModelMetadata, ModelStatus, Tensors, TensorSpec


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
    memory: CacheSnapshot
    models: list[ModelStatus]
    activity: ActivitySnapshot


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
    ) -> None:
        """``predictor`` runs predictions in fair turns between tenants on ``executor``'s
        compute pool; ``quotas`` holds tenants to their limits (none when ``None``)."""
        self._cache = cache
        self._store = store
        self._admission = admission
        self._executor = executor
        self._metrics = metrics
        self._predictor = predictor
        self._quotas = quotas or TenantQuotas(TenantLimits(), metrics=metrics)
        self._activity = activity if activity is not None else Activity()
        self._accepting = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True

    def stop_accepting(self) -> None:
        """Readiness goes false first on shutdown, so balancers drain before we stop."""
        self._accepting = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when accepting requests: serving does not wait for any model to be loaded."""
        return self._accepting

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
        async with self._admitted(model_id) as ticket, self._cache.lease(model_id) as model:
            result = await self._predict(model_id, model, tensors, ticket)
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
        async with self._admitted(model_id) as ticket, self._cache.lease(model_id) as model:
            return await self._predict(model_id, model, decode(model.inputs), ticket)

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

    async def _predict(
        self, model_id: ModelId, model: LoadedModel, tensors: Tensors, ticket: Ticket
    ) -> Tensors:
        """Run on a predict thread in the tenant's fair turn; dropped if its queue time ran out."""

        def timed() -> Tensors:
            started = time.perf_counter()
            try:
                return model.predict(tensors)
            finally:
                self._metrics.inference.observe(time.perf_counter() - started)

        return await self._predictor.run_until(ticket.deadline(), model_id.tenant, timed)

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
        async with self._cache.lease(model_id) as model:
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

    async def load(self, model_id: ModelId, *, pin: bool = False, exist_ok: bool = True) -> None:
        """Load now (and optionally pin). ``exist_ok=False`` raises ``ModelAlreadyLoaded``."""
        await self._cache.load(model_id, pin=pin, exist_ok=exist_ok)

    async def preload(self, patterns: Sequence[str], *, pin: bool = False) -> list[ModelId]:
        """Load models named by ids or glob patterns (``acme/*``) at start-up; returns the ids."""
        ids: list[ModelId] = []
        listed: list[str] | None = None
        for pattern in patterns:
            if not any(ch in pattern for ch in "*?["):
                ids.append(ModelId.parse(pattern))
                continue
            if listed is None:
                listed = await self._executor.run_io(self._store.list, "")
            matched = [ModelId.parse(raw) for raw in listed if fnmatch.fnmatchcase(raw, pattern)]
            if not matched:
                raise ModelNotFound(f"no model in the store matches {pattern!r}")
            ids.extend(matched)
        for model_id in ids:
            await self.load(model_id, pin=pin)
        return ids

    async def unload(self, model_id: ModelId) -> None:
        """Unload a resident model once its in-flight requests finish; unpins it first."""
        await self._cache.unload(model_id)

    def pin(self, model_id: ModelId, pinned: bool = True) -> None:
        self._cache.pin(model_id, pinned)

    def resident(self) -> list[ModelStatus]:
        return self._cache.status()

    def status(self) -> ServerStatus:
        return ServerStatus(
            self.ready(), self._cache.snapshot(), self._cache.status(), self._activity.snapshot()
        )

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
