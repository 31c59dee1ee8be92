"""Pipeline and Call: the way every request goes, admission to answer, for every protocol.

``async with pipeline.call(ref) as call`` names the version ``ref`` asks for, takes the
tenant's quota (429) and an admission slot (503, in the tenant's fair turn) and asks the cache
whether the model can start loading now (a full load queue answers at once): every refusal
comes before the request's body is read. ``await call.predict(inputs)`` then leases the model,
decodes the request against its signature (when it needs it) and runs it on a predict thread
in the tenant's fair turn. The protocols read bodies and encode answers; nothing here knows
HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

from tenantserve.activity import Activity
from tenantserve.cache.model_cache import ModelCache
from tenantserve.errors import InvalidInput, PredictTimedOut, TenantServeError
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel
from tenantserve.scheduling.admission import Admission, Ticket
from tenantserve.scheduling.batcher import Batcher
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.tenant_limits import TenantQuotas
from tenantserve.types import ModelId, ModelMetadata, ModelRef, ResolvedModel, Tensors, TensorSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

Decode = Callable[[tuple[TensorSpec, ...]], Tensors]
"""Turns a request into the model's input tensors, given the model's input signature."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """A request's answer: its output tensors, and whether its model was resident as it
    arrived (the ``X-Tenantserve-Cache`` header) — known without a second lookup."""

    outputs: Tensors
    hit: bool


class Versions(Protocol):
    """Which version a reference names (:class:`~tenantserve.cache.version_table.VersionTable`)."""

    async def resolve(self, ref: ModelRef) -> ResolvedModel: ...

    def knows(self, model_id: ModelId) -> bool:
        """Whether the model's versions were read (resolving it needs no store trip)."""
        ...

    def first_reads(self, tenant: str) -> int:
        """The tenant's models whose versions are being read for the first time."""
        ...


@dataclass(eq=False, slots=True)
class Pipeline:
    """The parts every request passes through, in the order it meets them."""

    quotas: TenantQuotas
    admission: Admission
    cache: ModelCache
    batcher: Batcher
    executor: BoundedExecutor
    activity: Activity
    metrics: Metrics
    versions: Versions
    """The version a reference names (the service's version table)."""
    lingering: set[asyncio.Task[None]] = field(default_factory=set)
    """Leases held for stopped runs until their threads let go (shutdown waits for them)."""
    in_flight: dict[str, int] = field(default_factory=dict)
    """Requests admitted and not yet answered, by tenant (waits for loads included)."""

    def _enter(self, tenant: str) -> None:
        self.in_flight[tenant] = self.in_flight.get(tenant, 0) + 1
        self.metrics.in_flight.inc()

    def _leave(self, tenant: str) -> None:
        left = self.in_flight[tenant] - 1
        if left:
            self.in_flight[tenant] = left
        else:
            del self.in_flight[tenant]
        self.metrics.in_flight.dec()

    def refuses_new_loads(self, tenant: str, starting: int = 0) -> bool:
        """Whether the load queue refuses a new load of ``tenant`` now, its first reads and
        ``starting`` more first calls counted (see :meth:`refuse_unread`)."""
        starting += self.versions.first_reads(tenant)
        return self.cache.refuses_new_loads(tenant, starting)

    def refuse_unread(self, model_id: ModelId, *, counted: bool = True, starting: int = 0) -> None:
        """Refuse a model whose versions were never read, when the load queue would refuse any
        of them: reading them is a store trip on an I/O thread, queued behind loads' fetches,
        where a storm of first calls waited only to be refused (none of its versions is
        resident: a resolved one would be in the table). The tenant's other first reads count
        as its loads: each is one about to start. ``counted``: as a refused inference.

        Raises:
            ModelNotReady, TenantLimitExceeded: the load queue, or the tenant's share, is full.
        """
        if self.versions.knows(model_id):
            return
        try:
            starting += self.versions.first_reads(model_id.tenant)
            self.cache.refuse_unread(model_id, starting)
        except TenantServeError as exc:
            if counted:
                self.metrics.tenants.observe(model_id.tenant)
                tracked = self.activity.request(model_id, hit=False)
                tracked.__enter__()
                tracked.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def call(self, target: ModelRef | ResolvedModel, *, counted: bool = True) -> Call:
        """One request for ``target`` (a reference, or a version already named);
        ``counted=False`` (a metadata read) is admitted the same way but is not an inference:
        no activity, no hit or miss, no recency."""
        return Call(self, target, counted)


class Call:
    """One admitted request (see the module): an async context manager, then ``predict``."""

    __slots__ = (
        "_admitted", "_counted", "_entered", "_pipeline", "_target", "_ticket", "_tracked", "hit",
        "model", "model_id",
    )  # fmt: skip

    def __init__(self, pipeline: Pipeline, target: ModelRef | ResolvedModel, counted: bool) -> None:
        self._pipeline = pipeline
        self._target = target
        self.model: ResolvedModel  # the version it serves: set on entry
        self.model_id: ModelId  # its cache key
        self._counted = counted
        self.hit = False
        self._ticket: Ticket | None = None
        self._tracked: Any = None
        self._entered = 0  # how many of quota, slot are held: what __aexit__ gives back
        self._admitted = False  # counted in flight, from admission to answer

    async def __aenter__(self) -> Call:
        p = self._pipeline
        target = self._target
        if isinstance(target, ResolvedModel):
            self.model = target
        elif target.unversioned_answers and p.cache.is_resident(target.model_id):
            # Warm and unversioned (VersionTable.resolve's first case): no version table.
            self.model = ResolvedModel.unversioned(target.model_id)
        else:
            p.refuse_unread(target.model_id, counted=self._counted)
            self.model = await p.versions.resolve(target)
        self.model_id = self.model.key
        tenant = self.model_id.tenant
        if self._counted:
            p.metrics.tenants.observe(tenant)  # traffic decides which tenants metrics name
            self.hit = p.cache.is_resident(self.model_id)
            # The whole request is timed and counted, refusals included.
            self._tracked = p.activity.request(self.model_id, hit=self.hit)
            self._tracked.__enter__()
        try:
            p.quotas.acquire(tenant)
            self._entered = 1
            self._ticket = await p.admission.acquire(tenant)
            self._entered = 2
            p.cache.refuse_early(self.model_id)
            p._enter(tenant)
            self._admitted = True
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        p = self._pipeline
        tenant = self.model_id.tenant
        if self._entered >= 2:
            p.admission.release(tenant)
        if self._entered >= 1:
            p.quotas.release(tenant)
        self._entered = 0
        if self._admitted:
            p._leave(tenant)
            self._admitted = False
        if self._tracked is not None:
            self._tracked.__exit__(exc_type, exc, tb)
            self._tracked = None

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on an I/O thread: for decoding a large body without holding the loop."""
        return await self._pipeline.executor.run_io(fn, *args)

    async def predict(
        self, inputs: Tensors | Decode, *, outputs: Sequence[str] | None = None,
        offload: bool = False,
    ) -> Prediction:  # fmt: skip
        """Lease the model, take its inputs (``inputs``, or decoded by it against the model's
        signature: on an I/O thread with ``offload``) and run it; ``outputs`` picks outputs by
        name (all when ``None``).

        A run past the predict timeout, or whose caller left (cancellation), is told to stop;
        while its thread still holds the model, the lease passes to a task that ends it when
        the thread lets go, so no model is closed under a run.

        Raises:
            ModelNotFound, ModelNotReady, InsufficientMemory, LoadFailed, InvalidInput,
            Overloaded (its queue time ran out), PredictFailed, PredictTimedOut.
        """
        assert self._ticket is not None, "predict inside `async with call`"
        p = self._pipeline
        lease = p.cache.lease(self.model_id, counted=self._counted)
        if p.cache.is_resident(self.model_id):
            model = await lease.__aenter__()
        else:
            model = await self._loaded(lease)
        ticket = self._ticket
        handed: list[asyncio.Future[None]] = []  # the lease's end passed to a task (see above)
        try:
            if callable(inputs):
                inputs = (
                    await self.off_loop(inputs, model.inputs) if offload else inputs(model.inputs)
                )
            result = await p.batcher.run(
                model, inputs, tenant=self.model_id.tenant, key=self.model_id.value,
                deadline=ticket.deadline(), waited_s=ticket.waited_s, hold=handed.append,
            )  # fmt: skip
        except PredictTimedOut as exc:
            log.warning("%s; its run was told to stop", exc)
            raise
        finally:
            if handed:
                self._end_lease_after(handed[0], lease)
            else:
                await lease.__aexit__(None, None, None)
        return Prediction(_selected(result, outputs, self.model_id), self.hit)

    async def _loaded(self, lease: AbstractAsyncContextManager[LoadedModel]) -> LoadedModel:
        """The leased model, once loaded. A request whose model must load gives its admission
        slot back while it waits (the load queue bounds those waits) and takes a slot again
        after, in its tenant's turn: past capacity, requests for resident models are not stuck
        behind requests waiting on loads."""
        p = self._pipeline
        tenant = self.model_id.tenant
        p.admission.release(tenant)
        self._entered = 1
        model = await lease.__aenter__()
        try:
            self._ticket = await p.admission.acquire(tenant)
        except BaseException:
            await lease.__aexit__(None, None, None)
            raise
        self._entered = 2
        return model

    def _end_lease_after(
        self, released: asyncio.Future[None], lease: AbstractAsyncContextManager[Any]
    ) -> None:
        async def end() -> None:
            await released
            await lease.__aexit__(None, None, None)

        task = asyncio.get_running_loop().create_task(end())
        lingering = self._pipeline.lingering
        lingering.add(task)  # hold a reference until done, or the task may be collected
        task.add_done_callback(lingering.discard)

    async def metadata(self) -> ModelMetadata:
        """The model's signature (loads it if needed: it is read from the graph)."""
        p = self._pipeline
        async with p.cache.lease(self.model_id, counted=False) as model:
            return ModelMetadata(
                model_id=self.model_id.value,
                platform=model.platform,
                inputs=model.inputs,
                outputs=model.outputs,
                labels=p.cache.labels_of(self.model_id),
            )


def _selected(result: Tensors, outputs: Sequence[str] | None, model_id: ModelId) -> Tensors:
    if outputs is None:
        return result
    unknown = [name for name in outputs if name not in result]
    if unknown:
        raise InvalidInput(
            f"unknown output {unknown[0]!r}; model {model_id} has outputs {sorted(result)}"
        )
    return {name: result[name] for name in outputs}
