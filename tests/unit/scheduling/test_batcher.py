"""Batcher: requests for one model that wait together run as one batch, each with its own rows,
deadline, cancellation and failure."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tenantserve.errors import InvalidInput, Overloaded, PredictFailed, PredictTimedOut
from tenantserve.metrics import Metrics
from tenantserve.runtimes.run_stop import current_run_stop
from tenantserve.scheduling.batcher import Batcher
from tenantserve.scheduling.codel import CoDel
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.types import Tensors, TensorSpec


class Doubler:
    """``y = 2 x``; refuses a row holding -1; records the rows of each call."""

    platform = "fake"
    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.gate = gate

    def predict(self, tensors: Tensors) -> Tensors:
        if self.gate is not None:
            self.gate.wait(10)
        x = tensors["x"]
        if (x == -1).any():
            raise InvalidInput("input 'x' holds -1")
        self.calls.append(len(x))
        return {"y": x * 2}

    def close(self) -> None:
        return None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def _batcher(pool: ThreadPoolExecutor, **options: float) -> Batcher:
    metrics = Metrics(CollectorRegistry())
    fair = FairExecutor(pool, workers=1, metrics=metrics)
    return Batcher(fair, metrics=metrics, **options)  # type: ignore[arg-type]


def _rows(*values: float) -> Tensors:
    return {"x": np.array([[v, v] for v in values], np.float32)}


async def _predict(
    batcher: Batcher,
    model: Doubler,
    x: Tensors,
    deadline: float = math.inf,
    held: list[asyncio.Future[None]] | None = None,
) -> Tensors:
    return await batcher.run(
        model, x, tenant="acme", key="acme/m", deadline=deadline, waited_s=0.0,
        hold=(held if held is not None else []).append,
    )  # fmt: skip


@pytest.mark.anyio
async def test_queued_requests_of_one_model_run_as_one_batch_each_with_its_rows(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8)
    gate = threading.Event()
    blocker_model = Doubler(gate)
    blocker = asyncio.ensure_future(_predict(batcher, blocker_model, _rows(0)))
    await asyncio.sleep(0.01)  # the thread is busy
    model = Doubler()
    asks = [_rows(1), _rows(2, 3), _rows(4)]
    answers = [asyncio.ensure_future(_predict(batcher, model, x)) for x in asks]
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    got = await asyncio.gather(*answers)
    assert model.calls == [4]  # one call, four rows
    for x, y in zip(asks, got, strict=True):
        np.testing.assert_array_equal(y["y"], x["x"] * 2)  # as batch 1 would answer


@pytest.mark.anyio
async def test_a_lone_request_runs_at_once_and_max_size_one_never_batches(
    pool: ThreadPoolExecutor,
) -> None:
    model = Doubler()
    y = await _predict(_batcher(pool, max_size=8), model, _rows(1, 2))
    np.testing.assert_array_equal(y["y"], _rows(2, 4)["x"])
    assert model.calls == [2]
    batcher = _batcher(pool, max_size=1)
    gate = threading.Event()
    blocker = asyncio.ensure_future(_predict(batcher, Doubler(gate), _rows(0)))
    await asyncio.sleep(0.01)
    alone = Doubler()
    answers = [asyncio.ensure_future(_predict(batcher, alone, _rows(i))) for i in (1, 2)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(blocker, *answers)
    assert alone.calls == [1, 1]


@pytest.mark.anyio
async def test_one_request_s_bad_input_fails_only_that_request(pool: ThreadPoolExecutor) -> None:
    batcher = _batcher(pool, max_size=8)
    gate = threading.Event()
    blocker = asyncio.ensure_future(_predict(batcher, Doubler(gate), _rows(0)))
    await asyncio.sleep(0.01)
    model = Doubler()
    good = asyncio.ensure_future(_predict(batcher, model, _rows(1)))
    bad = asyncio.ensure_future(_predict(batcher, model, _rows(-1)))
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    np.testing.assert_array_equal((await good)["y"], _rows(2)["x"])
    with pytest.raises(InvalidInput, match="holds -1"):
        await bad


@pytest.mark.anyio
async def test_a_request_that_leaves_or_runs_out_of_time_is_not_in_the_batch(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8)
    gate = threading.Event()
    blocker = asyncio.ensure_future(_predict(batcher, Doubler(gate), _rows(0)))
    await asyncio.sleep(0.01)
    model = Doubler()
    stays = asyncio.ensure_future(_predict(batcher, model, _rows(1)))
    held: list[asyncio.Future[None]] = []
    leaves = asyncio.ensure_future(_predict(batcher, model, _rows(5, 6), held=held))
    late = asyncio.ensure_future(_predict(batcher, model, _rows(7), deadline=0.0))
    await asyncio.sleep(0.01)
    leaves.cancel()  # its caller left
    with pytest.raises(asyncio.CancelledError):
        await leaves
    assert held == []  # not run yet: it just left, and no thread holds its model
    gate.set()
    await blocker
    await stays
    with pytest.raises(Overloaded, match="waited too long"):
        await late
    assert model.calls == [1]  # neither the one that left nor the late one ran


@pytest.mark.anyio
async def test_a_batch_past_the_timeout_answers_every_request_504(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8, timeout_s=0.5)
    gate = threading.Event()
    first = asyncio.ensure_future(_ask(batcher, Doubler(gate), _rows(0), "b"))
    await asyncio.sleep(0.01)  # the one thread is busy: what comes next queues together
    stuck = Doubler(threading.Event())  # never let go within the test's timeout
    batched = [asyncio.ensure_future(_predict(batcher, stuck, _rows(i))) for i in (1, 2)]
    await asyncio.sleep(0.01)
    gate.set()
    await first
    for answer in batched:
        with pytest.raises(PredictTimedOut, match=r"did not answer within 0\.5 s"):
            await answer
    assert stuck.gate is not None
    stuck.gate.set()


class Head(Doubler):
    """``y = scale x`` behind a shared base (group "g"): heads of one group run as one call."""

    group_key = "g"

    def __init__(self, scale: float, gate: threading.Event | None = None) -> None:
        super().__init__(gate)
        self.scale = scale
        self.groups: list[list[int]] = []  # rows per part of each group call

    def predict(self, tensors: Tensors) -> Tensors:
        self.calls.append(len(tensors["x"]))
        return {"y": tensors["x"] * self.scale}

    def predict_group(self, tensors: Tensors, parts: list[tuple[Head, int]]) -> list[Tensors]:
        if self.gate is not None:
            self.gate.wait(10)
        self.groups.append([rows for _, rows in parts])
        out: list[Tensors] = []
        start = 0
        for model, rows in parts:
            out.append({"y": tensors["x"][start : start + rows] * model.scale})
            start += rows
        return out


async def _ask(batcher: Batcher, model: Doubler, x: Tensors, tenant: str) -> Tensors:
    return await batcher.run(
        model, x, tenant=tenant, key=f"{tenant}/m", deadline=math.inf, waited_s=0, hold=print
    )


async def _blocked(batcher: Batcher) -> tuple[threading.Event, asyncio.Future[Tensors]]:
    gate = threading.Event()
    blocker = asyncio.ensure_future(_ask(batcher, Doubler(gate), _rows(0), "blocker"))
    await asyncio.sleep(0.01)  # the one thread is busy: what comes next queues together
    return gate, blocker


@pytest.mark.anyio
async def test_tenants_on_one_base_run_as_one_group_call_each_with_its_head(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8)
    gate, blocker = await _blocked(batcher)
    a, b = Head(2.0), Head(3.0)
    asks = [(a, _rows(1), "a"), (b, _rows(2, 3), "b"), (a, _rows(4), "a")]
    answers = [asyncio.ensure_future(_ask(batcher, m, x, t)) for m, x, t in asks]
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    got = await asyncio.gather(*answers)
    assert a.groups == [[2, 2]]  # one call: a's two requests together, then b's rows
    assert a.calls == b.calls == []
    for (model, x, _), y in zip(asks, got, strict=True):
        np.testing.assert_array_equal(y["y"], x["x"] * model.scale)


@pytest.mark.anyio
async def test_a_flooding_tenant_does_not_take_every_slot_of_a_batch(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=4)
    gate, blocker = await _blocked(batcher)
    flood, quiet = Head(2.0), Head(3.0)
    asks = [(flood, _rows(i), "flood") for i in range(6)]
    asks += [(quiet, _rows(10 + i), "quiet") for i in range(2)]
    answers = [asyncio.ensure_future(_ask(batcher, m, x, t)) for m, x, t in asks]
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    got = await asyncio.gather(*answers)
    # The first batch takes turns: two of the flood's, both of the quiet tenant's.
    assert flood.groups == [[2, 2]]
    assert flood.calls == [4]  # the rest of the flood, next, as one batch of its own
    for (model, x, _), y in zip(asks, got, strict=True):
        np.testing.assert_array_equal(y["y"], x["x"] * model.scale)


@pytest.mark.anyio
async def test_a_full_batch_leaves_the_rest_to_the_next_and_sizes_are_measured(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=2)
    gate, blocker = await _blocked(batcher)
    model = Doubler()
    answers = [asyncio.ensure_future(_predict(batcher, model, _rows(i))) for i in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    await blocker
    got = await asyncio.gather(*answers)
    assert model.calls == [2, 2, 1]
    assert [float(y["y"][0, 0]) for y in got] == [0.0, 2.0, 4.0, 6.0, 8.0]
    sizes = batcher._metrics.registry.get_sample_value(
        "tenantserve_batch_size_bucket", {"le": "1.0"}
    )
    counted = batcher._metrics.registry.get_sample_value("tenantserve_batch_size_count")
    assert (sizes, counted) == (2.0, 4.0)  # the blocker and the last one alone; two pairs


class Logged(Doubler):
    """``y = x``, each run noted in a log shared between models."""

    def __init__(self, log: list[str], name: str) -> None:
        super().__init__()
        self.log = log
        self.name = name

    def predict(self, tensors: Tensors) -> Tensors:
        self.log.append(f"{self.name} {len(tensors['x'])}")
        return {"y": tensors["x"]}


class Lone(Logged):
    """A model that never batches (a fixed batch dimension)."""

    inputs = (TensorSpec("x", "FP32", (1, 2)),)
    outputs = (TensorSpec("y", "FP32", (1, 2)),)


@pytest.mark.anyio
async def test_a_batch_is_charged_to_its_tenant_s_turns_request_by_request(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8)
    gate, blocker = await _blocked(batcher)
    log: list[str] = []
    batched, lone = Logged(log, "batch"), Lone(log, "lone")
    flood = [asyncio.ensure_future(_ask(batcher, batched, _rows(i), "flood")) for i in range(16)]
    others = [asyncio.ensure_future(_ask(batcher, lone, _rows(i), "other")) for i in range(8)]
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(blocker, *flood, *others)
    # The lone requests queued first: four (a turn) run, then a batch of eight of the flood's,
    # which costs its tenant two turns of four, so the other four lone runs come before the
    # flood's next batch (uncharged, the flood's turn would go on to its second batch).
    assert log == [*["lone 1"] * 4, "batch 8", *["lone 1"] * 4, "batch 8"]


@pytest.mark.anyio
async def test_a_batch_delay_holds_a_batch_for_company_though_a_thread_is_free(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8, delay_s=0.5)
    model = Doubler()
    first = asyncio.ensure_future(_predict(batcher, model, _rows(1)))
    await asyncio.sleep(0.01)  # the thread is free, but the batch waits for company
    second = asyncio.ensure_future(_predict(batcher, model, _rows(2)))
    got = await asyncio.gather(first, second)
    assert model.calls == [2]
    assert [float(y["y"][0, 0]) for y in got] == [2.0, 4.0]


@pytest.mark.anyio
async def test_a_request_after_everyone_left_a_batch_is_not_caught_in_its_end(
    pool: ThreadPoolExecutor,
) -> None:
    batcher = _batcher(pool, max_size=8)
    gate, blocker = await _blocked(batcher)
    model = Doubler()
    held: list[asyncio.Future[None]] = []
    leaves = asyncio.ensure_future(_predict(batcher, model, _rows(1), held=held))
    await asyncio.sleep(0)  # it opened a batch
    leaves.cancel()  # its caller left: the batch is empty and gives up its place
    comes = asyncio.ensure_future(_predict(batcher, model, _rows(2)))  # before the batch ends
    with pytest.raises(asyncio.CancelledError):
        await leaves
    assert held == []
    gate.set()
    await blocker
    np.testing.assert_array_equal((await comes)["y"], _rows(4)["x"])
    assert model.calls == [1]


class Stoppable(Doubler):
    """Runs until the server stops it (as ONNX Runtime's terminate flag does)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.stopped = threading.Event()

    def predict(self, tensors: Tensors) -> Tensors:
        stop = current_run_stop()
        assert stop is not None
        forget = stop.on_stop(self.stopped.set)
        self.started.set()
        try:
            if not self.stopped.wait(10):
                raise AssertionError("never stopped")
            raise PredictFailed("the run was stopped")
        finally:
            forget()


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.anyio
async def test_a_running_prediction_everyone_left_is_stopped_and_gives_its_thread_back(
    pool: ThreadPoolExecutor, batched: bool
) -> None:
    batcher = _batcher(pool, max_size=8)
    blocker = None
    if batched:  # queued behind another: it runs as a batch
        gate, blocker = await _blocked(batcher)
    model = Stoppable()
    held: list[asyncio.Future[None]] = []
    answer = asyncio.ensure_future(_predict(batcher, model, _rows(1), held=held))
    await asyncio.sleep(0.01)
    if blocker is not None:
        gate.set()
        await blocker
    await asyncio.to_thread(model.started.wait, 10)
    answer.cancel()  # its caller left (a deadline passed, a client hung up)
    with pytest.raises(asyncio.CancelledError):
        await answer
    assert len(held) == 1  # the caller's lease waits for the thread
    await asyncio.wait_for(held[0], 5)  # the thread let go: not after the run's 10 s
    assert model.stopped.is_set()
    # The one thread serves the next request at once.
    assert (await asyncio.wait_for(_predict(batcher, Doubler(), _rows(2)), 5))["y"].tolist() == [
        [4.0, 4.0]
    ]


@pytest.mark.anyio
async def test_each_request_in_a_batch_is_judged_on_its_own_wait_while_its_tenant_stands(
    pool: ThreadPoolExecutor,
) -> None:
    now = [0.0]
    codel = CoDel(target_s=0.01, interval_s=0.5, clock=lambda: now[0])
    codel.observe(1.0, "acme")  # acme's requests waited long for a whole interval
    now[0] = 0.5  # its queue stands; CoDel's clock stops here
    metrics = Metrics(CollectorRegistry())
    batcher = Batcher(
        FairExecutor(pool, workers=1, metrics=metrics, codel=codel), metrics=metrics, max_size=8
    )
    gate, blocker = await _blocked(batcher)
    model = Doubler()

    async def ask(value: float, waited_s: float) -> Tensors:
        return await batcher.run(
            model, _rows(value), tenant="acme", key="acme/m", deadline=math.inf,
            waited_s=waited_s, hold=print,
        )  # fmt: skip

    # The first opened the batch after 50 ms in admission (past 2 x 10 ms); the second just
    # came. Judged by the batch's first request, both were refused; judged each, one runs.
    stale = asyncio.ensure_future(ask(1, 0.05))
    fresh = asyncio.ensure_future(ask(2, 0.0))
    await asyncio.sleep(0)
    gate.set()
    await blocker
    np.testing.assert_array_equal((await fresh)["y"], _rows(2)["x"] * 2)
    with pytest.raises(Overloaded):
        await stale
    assert model.calls == [1]
