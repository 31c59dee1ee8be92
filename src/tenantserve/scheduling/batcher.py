"""Batcher: requests for one model that wait for a predict thread together run as one batch.

A batch forms while its model's work waits for a thread: the first request of a model opens a
batch and queues it in the tenant's fair turn; later requests for the same model (with inputs
that stack: same names, dtypes and trailing shapes) join it until a thread takes it or it
holds ``max_size`` requests. So an idle server runs a lone request at once, and a busy one runs
each model's queued requests in one call. ``delay_s`` may hold a batch back a moment for
company even when a thread is free (0: only what is already queued).

Each request keeps its own guarantees: one whose deadline passed before its batch ran is
dropped from it (503); one whose caller left before it ran leaves it; a batch past the predict
timeout answers every request 504; and a batch whose run fails is run again one request at a
time, so one request's bad input fails only that request. Outputs are split back by rows.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Histogram

from tenantserve.errors import Overloaded, PredictTimedOut, QueueTimedOut, TenantServeError
from tenantserve.metrics import Metrics
from tenantserve.runtimes import LoadedModel
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.stoppable_run import StoppableRun
from tenantserve.types import Tensors

Outcome = Tensors | BaseException


@dataclass(eq=False, slots=True)
class _Item:
    tensors: Tensors
    rows: int
    deadline: float
    future: asyncio.Future[Tensors]
    timer: asyncio.TimerHandle | None = None  # answers it at its deadline while it waits


@dataclass(eq=False, slots=True)
class _Batch:
    model: LoadedModel
    key: str
    tenant: str
    signature: tuple[tuple[str, str, tuple[int, ...]], ...]
    items: list[_Item] = field(default_factory=list)
    closed: bool = False  # full, or given a thread: no one joins
    frozen: bool = False  # given a thread: its items are final
    run: StoppableRun[list[Outcome]] | None = None
    done: asyncio.Future[None] | None = None  # completes when no thread holds the model
    task: asyncio.Task[None] | None = None  # the batch's place in the predict queue


class Batcher:
    """Runs each prediction alone or in its model's batch (see the module)."""

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
        self._timer: Histogram = metrics.inference
        self._max_size = max_size
        self._delay_s = delay_s
        self._timeout_s = timeout_s
        self._open: dict[tuple[int, tuple[tuple[str, str, tuple[int, ...]], ...]], _Batch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def job(
        self, model: LoadedModel, tensors: Tensors, *, tenant: str, key: str, deadline: float,
        waited_s: float,
    ) -> Job:  # fmt: skip
        """A prediction of ``model`` on ``tensors``: alone, or in a batch of its model."""
        rows = _rows(model, tensors) if self._max_size > 1 else None
        if rows is None:
            return _Alone(self, model, tensors, tenant, key, deadline, waited_s)
        signature = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in tensors.items()))
        loop = asyncio.get_running_loop()
        item = _Item(tensors, rows, deadline, loop.create_future())
        batch = self._open.get((id(model), signature))
        if batch is None:
            batch = _Batch(model, key, tenant, signature)
            self._open[(id(model), signature)] = batch
            task = batch.task = loop.create_task(self._run(batch, waited_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        batch.items.append(item)
        if math.isfinite(deadline):
            # Answered at its deadline, not when a thread next frees up.
            delay = max(0.0, deadline - time.monotonic())
            item.timer = loop.call_later(delay, self._expire, batch, item)
        if len(batch.items) >= self._max_size:
            self._close(batch)
        return _InBatch(batch, item)

    def _expire(self, batch: _Batch, item: _Item) -> None:
        if not batch.frozen and not item.future.done():
            self._drop(batch, item)

    def _drop(self, batch: _Batch, item: _Item) -> None:
        self._metrics.reject("timeout", batch.tenant)
        item.future.set_exception(
            QueueTimedOut("request waited too long for a predict thread; retry shortly")
        )

    async def _run(self, batch: _Batch, waited_s: float) -> None:
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)  # company, even with a thread free
        run: StoppableRun[list[Outcome]] = StoppableRun(lambda: _compute(batch), self._timer)
        batch.run = run
        batch.done = asyncio.get_running_loop().create_future()
        try:
            outcomes = await self._predictor.run_until(
                math.inf, batch.tenant, run, timeout_s=self._timeout_s, key=batch.key,
                waited_s=waited_s, prepare=lambda: self._freeze(batch), counted=False,
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
                    self._metrics.reject("timeout", batch.tenant)  # each request's own
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
        if not batch.closed:
            batch.closed = True
            if self._open.get((id(batch.model), batch.signature)) is batch:
                del self._open[(id(batch.model), batch.signature)]

    def _freeze(self, batch: _Batch) -> None:
        """On the loop as a thread takes ``batch``: its items are final; those whose callers
        left are out, those past their deadline are answered 503."""
        self._close(batch)
        batch.frozen = True
        now = time.monotonic()
        kept = []
        for item in batch.items:
            if item.timer is not None:
                item.timer.cancel()
            if item.future.done():
                continue  # its caller left, or its deadline passed
            if now > item.deadline:
                self._drop(batch, item)
                continue
            kept.append(item)
        batch.items = kept

    async def shutdown(self) -> None:
        """Wait for every batch task (shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Job:
    """One request's prediction: ``await job.result()``; on timeout or cancellation,
    :meth:`stop` says what the caller's lease must outlive."""

    async def result(self) -> Tensors:
        raise NotImplementedError

    def stop(self) -> asyncio.Future[None] | None:
        """Tell the work to stop, if it is this request's alone; a future that completes when
        no thread holds the model any more, or ``None`` when none does now."""
        raise NotImplementedError


class _Alone(Job):
    def __init__(
        self, batcher: Batcher, model: LoadedModel, tensors: Tensors, tenant: str, key: str,
        deadline: float, waited_s: float,
    ) -> None:  # fmt: skip
        self._batcher = batcher
        self._run = StoppableRun(lambda: model.predict(tensors), batcher._timer)
        self._call = (deadline, tenant, key, waited_s)

    async def result(self) -> Tensors:
        deadline, tenant, key, waited_s = self._call
        b = self._batcher
        return await b._predictor.run_until(
            deadline, tenant, self._run, timeout_s=b._timeout_s, key=key, waited_s=waited_s
        )

    def stop(self) -> asyncio.Future[None] | None:
        return self._run.stop()


class _InBatch(Job):
    def __init__(self, batch: _Batch, item: _Item) -> None:
        self._batch = batch
        self._item = item

    async def result(self) -> Tensors:
        return await asyncio.shield(self._item.future)

    def stop(self) -> asyncio.Future[None] | None:
        # Others' requests share the run: it is not stopped for one caller (a batch past its
        # timeout was stopped by its own task). Before a thread takes the batch the request
        # just leaves it; after, its lease waits for the thread.
        batch = self._batch
        if not self._item.future.done():
            self._item.future.cancel()
        if not batch.frozen:
            if all(item.future.done() for item in batch.items) and batch.task is not None:
                batch.task.cancel()  # no one left in it: it gives up its place in the queue
            return None
        done = batch.done
        return done if done is not None and not done.done() else None


def _rows(model: LoadedModel, tensors: Tensors) -> int | None:
    """The request's row count when its model takes and gives a free first dimension and every
    input has the same rows; ``None``: it runs alone."""
    if not tensors or any(s.shape[:1] != (-1,) for s in (*model.inputs, *model.outputs)):
        return None
    counts = {a.shape[0] if a.ndim else -1 for a in tensors.values()}
    return counts.pop() if len(counts) == 1 and -1 not in counts else None


def _compute(batch: _Batch) -> list[Outcome]:
    """On the compute thread: the batch's items as one call, split back by rows; if that
    fails, each item alone, so a failure is the failing request's own."""
    items = batch.items
    if not items:
        return []  # every caller left: the model is not touched
    if len(items) == 1:
        return [_alone(batch.model, items[0].tensors)]
    names = items[0].tensors.keys()
    stacked = {n: np.concatenate([item.tensors[n] for item in items]) for n in names}
    try:
        outputs = batch.model.predict(stacked)
        bounds = np.cumsum([0, *(item.rows for item in items)])
        total = int(bounds[-1])
        if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
            raise ValueError("an output without a row per input row")
        return [
            {n: a[bounds[i] : bounds[i + 1]] for n, a in outputs.items()} for i in range(len(items))
        ]
    except Exception:
        return [_alone(batch.model, item.tensors) for item in items]


def _alone(model: LoadedModel, tensors: Tensors) -> Outcome:
    try:
        return model.predict(tensors)
    except Exception as exc:
        return exc


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
    """Complete ``batch.done`` once no thread holds the model (at once, or when ``released``)."""
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
