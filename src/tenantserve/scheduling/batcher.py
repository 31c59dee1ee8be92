"""Batcher: requests that wait for a predict thread together run as one batch.

A batch forms while its work waits for a thread: the first request opens a batch and queues
it in its tenant's fair turn; later requests join it until a thread takes it. Requests join
when their inputs stack (same names, dtypes and trailing shapes) and they are of the same
model, or of models on one shared base (``runtimes/grouped.py``: different tenants' heads on
one encoder run the encoder once). So an idle server runs a lone request at once, and a busy
one runs queued requests in one call. ``delay_s`` may hold a batch back a moment for company
even when a thread is free (0: only what is already queued).

When a thread takes a batch it keeps at most ``max_size`` requests, chosen round robin
between tenants in arrival order, so one tenant cannot fill every slot while others wait; the
rest form the next batch, queued at once. Each request keeps its own guarantees: one whose
deadline passed before its batch ran is dropped from it (503); one whose caller left before
it ran leaves it; a batch past the predict timeout answers every request 504; and a batch
whose run fails is run again one request at a time, so one request's bad input fails only
that request. Outputs are split back by rows.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tenantserve.errors import Overloaded, PredictTimedOut, QueueTimedOut, TenantServeError
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel
from tenantserve.runtimes.grouped import group_key
from tenantserve.scheduling.batch_run import Outcome, Request, compute
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.stoppable_run import StoppableRun
from tenantserve.types import Tensors

_Key = tuple[object, tuple[tuple[str, str, tuple[int, ...]], ...]]


@dataclass(eq=False, slots=True)
class _Item:
    request: Request
    tenant: str
    deadline: float
    queued_since: float  # time.monotonic() it began to queue (admission included)
    future: asyncio.Future[Tensors]
    batch: _Batch | None = None
    running: bool = False  # in a batch a thread took: it stays to the end
    timer: asyncio.TimerHandle | None = None  # answers it at its deadline while it waits


@dataclass(eq=False, slots=True)
class _Batch:
    key: _Key
    tenant: str  # whose fair turn it queues in (its first request's)
    model_id: str  # fenced while a run of the batch is stuck past its timeout
    items: list[_Item] = field(default_factory=list)
    frozen: bool = False  # given a thread: its items are final
    run: StoppableRun[list[Outcome]] | None = None
    done: asyncio.Future[None] | None = None  # completes when no thread holds the models
    task: asyncio.Task[None] | None = None  # the batch's place in the predict queue


class Batcher:
    """Runs each prediction alone or in a batch (see the module)."""

    def __init__(
        self,
        predictor: FairExecutor,
        *,
        metrics: Metrics,
        max_size: int = 8,
        delay_s: float = 0.0,
        timeout_s: float = math.inf,
    ) -> None:
        self._predictor = predictor
        self._metrics = metrics
        self._max_size = max_size
        self._delay_s = delay_s
        self._timeout_s = timeout_s
        self._open: dict[_Key, _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(
        self, model: LoadedModel, tensors: Tensors, *, tenant: str, key: str, deadline: float,
        waited_s: float, hold: Callable[[asyncio.Future[None]], object],
    ) -> Tensors:  # fmt: skip
        """``model``'s (``key``: its id) outputs for ``tensors``, run alone or in a batch.

        A run past the predict timeout, or whose caller left (cancellation), is told to stop;
        if a thread still holds the model, ``hold`` gets a future that completes when it lets
        go (the caller's lease must outlive it) before the exception goes on.
        """
        rows = _rows(model, tensors) if self._max_size > 1 else None
        if rows is not None and (self._delay_s > 0 or not self._predictor.has_free_thread):
            return await self._in_batch(model, tensors, rows, tenant, key, deadline, waited_s, hold)
        # Alone: nothing to batch with, or a thread is free now (no one could join it).
        run = StoppableRun(functools.partial(model.predict, tensors), self._metrics.inference)
        self._metrics.batch_size.observe(1)
        try:
            return await self._predictor.run_until(
                deadline, tenant, run, timeout_s=self._timeout_s, key=key, waited_s=waited_s
            )
        except (PredictTimedOut, asyncio.CancelledError):
            _hand_over(run.stop(), hold)
            raise

    async def _in_batch(
        self, model: LoadedModel, tensors: Tensors, rows: int, tenant: str, key: str,
        deadline: float, waited_s: float, hold: Callable[[asyncio.Future[None]], object],
    ) -> Tensors:  # fmt: skip
        signature = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in tensors.items()))
        shared = group_key(model)
        batch_key: _Key = (id(model) if shared is None else shared, signature)
        loop = asyncio.get_running_loop()
        item = _Item(
            Request(model, tensors, rows), tenant, deadline, time.monotonic() - waited_s,
            loop.create_future(),
        )  # fmt: skip
        batch = self._open.get(batch_key)
        if batch is None:
            batch = self._start(_Batch(batch_key, tenant, key))
        self._join(batch, item)
        if math.isfinite(deadline):
            # Answered at its deadline, not when a thread next frees up.
            item.timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, item)
        try:
            return await asyncio.shield(item.future)
        except (PredictTimedOut, asyncio.CancelledError):
            _hand_over(self._leave(item), hold)
            raise

    def _start(self, batch: _Batch) -> _Batch:
        self._open[batch.key] = batch
        task = batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    @staticmethod
    def _join(batch: _Batch, item: _Item) -> None:
        batch.items.append(item)
        item.batch = batch

    def _expire(self, item: _Item) -> None:
        if not item.running and not item.future.done():
            self._drop(item)

    def _drop(self, item: _Item) -> None:
        self._metrics.reject("timeout", item.tenant)
        item.future.set_exception(
            QueueTimedOut("request waited too long for a predict thread; retry shortly")
        )

    async def _run(self, batch: _Batch) -> None:
        run: StoppableRun[list[Outcome]] = StoppableRun(
            lambda: compute([item.request for item in batch.items]), self._metrics.inference
        )
        batch.run = run
        batch.done = asyncio.get_running_loop().create_future()
        try:
            if self._delay_s > 0:
                await asyncio.sleep(self._delay_s)  # company, even with a thread free
            outcomes = await self._predictor.run_until(
                math.inf, batch.tenant, run, timeout_s=self._timeout_s, key=batch.model_id,
                prepare=lambda: self._freeze(batch), counted=False, judged=False,
            )  # fmt: skip
        except PredictTimedOut as exc:
            released = run.stop()
            for item in batch.items:
                _settle(item, PredictTimedOut(str(exc)))
            _finish(batch, released)
            return
        except BaseException as exc:  # refused (a fenced model, CoDel) or cancelled: each one
            self._close(batch)
            shared = exc if isinstance(exc, TenantServeError) else _stopped()
            for item in batch.items:
                if isinstance(exc, QueueTimedOut) and not item.future.done():
                    self._metrics.reject("timeout", item.tenant)  # each request's own
                _settle(item, shared)
            _finish(batch, None)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for item, outcome in zip(batch.items, outcomes, strict=True):
            _settle(item, outcome)
        _finish(batch, None)

    def _close(self, batch: _Batch) -> None:
        """No one joins ``batch`` from here."""
        if self._open.get(batch.key) is batch:
            del self._open[batch.key]

    def _freeze(self, batch: _Batch) -> dict[str, int]:
        """On the loop as a thread takes ``batch``: those whose callers left are out, those
        past their deadline or too late by CoDel (each judged on its own wait: the rest of a
        batch may have waited through many) are answered 503; of the rest, up to
        ``max_size`` in fair turns between tenants run now, and the others open the next
        batch. Returns the requests that run, by tenant (each is charged to its tenant's
        fair turns)."""
        self._close(batch)
        batch.frozen = True
        now = time.monotonic()
        rest: list[_Item] = []
        for item in batch.items:
            if item.future.done():
                continue  # its caller left, or its deadline passed
            if now > item.deadline:
                self._drop(item)
                continue
            rest.append(item)
        kept: list[_Item] = []
        while rest and len(kept) < self._max_size:
            # Only those leaving the queue now are judged (CoDel reads departures' waits):
            # the rest stay queued, and the newest of them would hide a standing queue.
            picked, rest = _fair_pick(rest, self._max_size - len(kept))
            for item in picked:
                if self._predictor.too_late(item.tenant, now - item.queued_since):
                    self._drop(item)
                else:
                    kept.append(item)
        for item in kept:
            item.running = True
            if item.timer is not None:
                item.timer.cancel()
        batch.items = kept
        if kept:
            self._metrics.batch_size.observe(len(kept))
            self._metrics.batch_models.observe(len({id(item.request.model) for item in kept}))
        if rest:
            # The next batch, queued now; later requests join it behind these.
            following = self._start(_Batch(batch.key, rest[0].tenant, batch.model_id))
            for item in rest:
                self._join(following, item)
        return dict(Counter(item.tenant for item in kept))

    def _leave(self, item: _Item) -> asyncio.Future[None] | None:
        """``item``'s caller left or timed out: a future that completes when no thread holds
        its model any more, or ``None`` when none does now. Others' requests share the run:
        it is not stopped for one caller (a batch past its timeout was stopped by its own
        task) but for the last one to leave, so a run no one waits for gives its thread back.
        Before a thread takes the batch the request just leaves it."""
        batch = item.batch
        if not item.future.done():
            item.future.cancel()
        if item.timer is not None:
            item.timer.cancel()
        if batch is None:
            return None
        if not item.running:
            if all(other.future.done() for other in batch.items) and batch.task is not None:
                # No one left in it: it gives up its place in the queue, and no one joins it
                # meanwhile (they would be answered with its cancellation).
                self._close(batch)
                batch.task.cancel()
            return None
        if batch.run is not None and all(other.future.done() for other in batch.items):
            released = batch.run.stop()
            if released is not None:
                return released
        done = batch.done
        return done if done is not None and not done.done() else None

    async def shutdown(self) -> None:
        """Wait for every batch task (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _hand_over(
    released: asyncio.Future[None] | None, hold: Callable[[asyncio.Future[None]], object]
) -> None:
    if released is not None:
        hold(released)


def _fair_pick(items: list[_Item], size: int) -> tuple[list[_Item], list[_Item]]:
    """Up to ``size`` of ``items`` taken one per tenant in turn (each tenant's in arrival
    order), in arrival order; and the rest, in arrival order."""
    if len(items) <= size:
        return items, []
    queues: defaultdict[str, deque[_Item]] = defaultdict(deque)
    for item in items:
        queues[item.tenant].append(item)
    chosen: set[int] = set()
    turns = deque(queues)
    while len(chosen) < size:
        tenant = turns.popleft()
        chosen.add(id(queues[tenant].popleft()))
        if queues[tenant]:
            turns.append(tenant)
    kept = [item for item in items if id(item) in chosen]
    return kept, [item for item in items if id(item) not in chosen]


def _rows(model: LoadedModel, tensors: Tensors) -> int | None:
    """The request's row count when its model takes and gives a free first dimension and every
    input has the same rows; ``None``: it runs alone."""
    if not tensors or any(s.shape[:1] != (-1,) for s in (*model.inputs, *model.outputs)):
        return None
    counts = {a.shape[0] if a.ndim else -1 for a in tensors.values()}
    return counts.pop() if len(counts) == 1 and -1 not in counts else None


def _settle(item: _Item, outcome: Outcome) -> None:
    if item.future.done():
        return
    if isinstance(outcome, BaseException):
        item.future.set_exception(outcome)
    else:
        item.future.set_result(outcome)


def _stopped() -> Overloaded:
    return Overloaded("the server stopped this request's batch; retry")


def _finish(batch: _Batch, released: asyncio.Future[None] | None) -> None:
    """Complete ``batch.done`` once no thread holds the models (at once, or when ``released``)."""
    done = batch.done
    if done is None or done.done():
        return
    if released is None:
        done.set_result(None)
    else:
        released.add_done_callback(lambda _: _complete(done))


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
