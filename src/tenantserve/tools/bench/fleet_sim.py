"""A fleet of instances behind the model-affinity router, simulated one request at a time.

Each instance is the server's cache (:class:`~tenantserve.tools.bench.replay.CacheSim`) in front of
a FIFO queue on its cores. The router is the Ray deployment's
(``integrations/ray_affinity.py``; the layers keep bench from importing it): a model's
requests go to the least busy instance holding it; when every holder has
``max_ongoing`` requests, the request spills to the instance with the most free budget, which
loads a copy and holds the model too. So a hot model spreads over as many instances as its
traffic needs, and cold models land where there is room.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenantserve.tools.bench.fleet_profile import FleetProfile
from tenantserve.tools.bench.replay import CacheSim, make_policy, quiet_cache_log

Progress = Callable[[int], None]
"""Called with the number of requests simulated so far, every :data:`PROGRESS_EVERY`."""
PROGRESS_EVERY = 20_000


class CoreQueue:
    """One instance as the server runs: one event loop, ``cores`` predict threads and
    ``load_slots`` loads at once (single-flight: later requests for a model that is loading
    wait for that load).

    A request's handling (HTTP, JSON, routing: ``loop_s``) takes the event loop, one request
    at a time whatever the cores (Python holds one lock), and a core, which then runs its
    inference (on one core, handling and inference take turns). The
    quarter-budget suite run bears this out: its rate is the loop's (16 clients, 540 req/s,
    1.5 of 2 cores busy), not the cores'.

    A request whose model is not resident waits for the load and only then queues, behind
    whatever came meanwhile (:meth:`admit` says when it may queue, :meth:`run` queues it). A
    load takes the loop for its own time (``load_s``, measured on a quiet box) and holds its
    slot ``load_hold`` times as long: a busy server's load waits for its threads and its
    event loop between steps (fetch, room, load), 10 ms against 1 ms alone.
    """

    def __init__(self, cores: int, load_slots: int, load_hold: float = 1.0) -> None:
        self._core_free = [0.0] * cores
        self._loop_free = 0.0
        self._slot_free = [0.0] * load_slots
        self._load_hold = load_hold
        self._ready_at: dict[str, float] = {}
        self._finishes: list[float] = []  # of requests queued: what the router counts
        self._waiting = 0  # admitted, waiting for a load, not yet queued
        self.busy_s = 0.0
        self.loading_s = 0.0  # the part of busy_s that loads took

    def ongoing(self, t_s: float) -> int:
        """Requests admitted and not finished at ``t_s`` (waiting for a load, queued or
        running)."""
        finishes = self._finishes
        while finishes and finishes[0] <= t_s:
            heapq.heappop(finishes)
        return len(finishes) + self._waiting

    def admit(self, t_s: float, model_id: str, load_s: float, hit: bool) -> tuple[float, bool]:
        """A request arriving at ``t_s``: when it may queue, and whether it waited for a load
        of its model (its own, or one in flight when it came)."""
        ready = max(t_s, self._ready_at.get(model_id, 0.0))
        loading = ready > t_s
        if not hit:
            start = max(t_s, heapq.heappop(self._slot_free), self._loop_free)
            self._loop_free = start + load_s
            ready = start + load_s * self._load_hold
            heapq.heappush(self._slot_free, ready)
            self._ready_at[model_id] = ready
            self.busy_s += load_s
            self.loading_s += load_s
        self._waiting += ready > t_s
        return ready, loading or not hit

    def run(self, ready_s: float, loop_s: float, work_s: float, waited: bool) -> float:
        """Queue a request :meth:`admit` let in at ``ready_s`` (``waited``: it was not then
        queued): ``loop_s`` on the loop and a core, then ``work_s`` on that core; its finish
        time. Requests are queued in the order of their ``ready_s``."""
        self._waiting -= waited
        # The loop's thread runs on a core too: a request takes one for both of its parts.
        handled = max(ready_s, self._loop_free, heapq.heappop(self._core_free)) + loop_s
        self._loop_free = handled
        finish = handled + work_s
        heapq.heappush(self._core_free, finish)
        heapq.heappush(self._finishes, finish)
        self.busy_s += loop_s + work_s
        return finish


def rate_bound(cores: int, request_cpu_s: float, inference_s: float) -> float:
    """Requests per second one instance serves at most of a model (see :class:`CoreQueue`):
    its loop handles one request at a time, and each request takes a core for its handling
    and its inference."""
    return 1.0 / max(request_cpu_s, (request_cpu_s + inference_s) / cores, 1e-12)


@dataclass(slots=True)
class FleetRun:
    """What the fleet did with the trace (or with its start, when ``complete`` is False)."""

    latencies: list[float]
    cold: list[bool]
    """Per request, whether it waited for a load of its model."""
    hits: int
    loads: int
    refused: int
    requests_per_instance: list[int]
    busy_s_per_instance: list[float]
    holders: dict[str, set[int]] = field(default_factory=dict)
    """Per model, every instance that served it: a hot model's copies."""
    loading_s: float = 0.0
    """Core seconds the instances spent loading models (part of ``busy_s_per_instance``)."""
    slow: int = 0
    """Requests that took longer than ``slow_s``."""
    complete: bool = True
    finished_s: float = 0.0
    """When the last answer came (trace time)."""


@dataclass(frozen=True, slots=True)
class FleetShape:
    """``instances`` instances, each ``cores`` cores and ``budget_bytes`` for models."""

    instances: int
    cores: int
    budget_bytes: int
    max_ongoing: int
    policy: str = "lru"
    load_slots: int = 1
    min_residency_s: float = 1.0
    request_cpu_s: float = 0.0


def run_fleet(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    shape: FleetShape,
    *,
    slow_s: float = math.inf,
    give_up_after: int | None = None,
    progress: Progress | None = None,
    clients: int | None = None,
) -> FleetRun:
    """Route and serve every request of ``trace`` in time order.

    With ``clients``, as a closed loop of that many clients (the benchmarks' mode): the trace
    gives only the order of models, and each request is sent when a client's last answer
    came, so the rate follows the server's pace as it does in a measured closed-loop run.

    With ``give_up_after``, stop (``complete`` False) once that many requests took over
    ``slow_s``: the p99 has missed its target and the rest would only say by how much. The
    planner's search spends most of its time on counts that miss.
    """
    with quiet_cache_log():
        return asyncio.run(_run(trace, profile, shape, slow_s, give_up_after, progress, clients))


async def _run(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    shape: FleetShape,
    slow_s: float,
    give_up_after: int | None,
    progress: Progress | None,
    clients: int | None = None,
) -> FleetRun:
    sizes = {m: c.resident_bytes for m, c in profile.models.items()}
    load_seconds = {m: c.load_s for m, c in profile.models.items()}
    inference = {m: c.inference_s for m, c in profile.models.items()}
    clock = [0.0]
    router = _Router(shape.instances, shape.max_ongoing)
    caches = [
        CacheSim(sizes, shape.budget_bytes,
                 make_policy(shape.policy, shape.min_residency_s, clock), load_seconds, clock,
                 on_change=router.watcher(index))
        for index in range(shape.instances)
    ]  # fmt: skip
    queues = [
        CoreQueue(shape.cores, shape.load_slots, profile.load_hold) for _ in range(shape.instances)
    ]
    router.attach(caches, queues)
    run = FleetRun([], [], 0, 0, 0, [0] * shape.instances, [])
    # Closed loop: when each client is free next (taken earliest first, so time runs forward).
    free = [trace[0][0]] * clients if clients and trace else None
    # Requests admitted and not yet queued on cores, by when they may be (after their load):
    # (ready, order, instance, sent, work, cold).
    admitted: list[tuple[float, int, int, float, float, bool]] = []
    index = 0
    while index < len(trace) or admitted:
        if index == len(trace):
            next_s = math.inf
        elif free is not None:
            next_s = free[0] if free else math.inf
        else:
            next_s = trace[index][0]
        if admitted and admitted[0][0] <= next_s:
            ready_s, _, chosen, t_s, work_s, cold = heapq.heappop(admitted)
            finish_s = queues[chosen].run(ready_s, shape.request_cpu_s, work_s, ready_s > t_s)
            latency = finish_s - t_s
            run.finished_s = max(run.finished_s, finish_s)
            if free is not None:
                heapq.heappush(free, finish_s)
            run.latencies.append(latency)
            run.cold.append(cold)
            if latency > slow_s:
                run.slow += 1
                if give_up_after is not None and run.slow >= give_up_after:
                    run.complete = False
                    break
            continue
        sent_s, model_id = trace[index]
        t_s = sent_s if free is None else heapq.heappop(free)
        chosen = router.route(model_id, t_s)
        cache = caches[chosen]
        hit = cache.hit(t_s, model_id)
        if not hit:
            await cache.load(t_s, model_id)
        ready_s, cold = queues[chosen].admit(t_s, model_id, load_seconds[model_id], hit)
        heapq.heappush(admitted, (ready_s, index, chosen, t_s, inference[model_id], cold))
        run.requests_per_instance[chosen] += 1
        if progress is not None and index % PROGRESS_EVERY == 0:
            progress(index)
        index += 1
    for cache in caches:
        run.hits += cache.hits
        run.loads += cache.loads
        run.refused += cache.refused
        await cache.close()
    run.busy_s_per_instance = [queue.busy_s for queue in queues]
    run.loading_s = sum(queue.loading_s for queue in queues)
    run.holders = router.served
    return run


class _Router:
    """Picks each request's instance as ``rank_replicas`` and Serve do. The caches tell it
    what they hold as it changes (the deployment's routing stats, without their lag: the
    router's own placements cover that lag in the deployment)."""

    def __init__(self, instances: int, max_ongoing: int) -> None:
        self._instances = instances
        self._max_ongoing = max_ongoing
        self._holders: dict[str, set[int]] = {}
        self._caches: Sequence[CacheSim] = ()
        self._queues: Sequence[CoreQueue] = ()
        self.served: dict[str, set[int]] = {}
        """Per model, every instance that held it at some point."""

    def attach(self, caches: Sequence[CacheSim], queues: Sequence[CoreQueue]) -> None:
        self._caches, self._queues = caches, queues

    def watcher(self, index: int) -> Callable[[str, bool], None]:
        def changed(model_id: str, resident: bool) -> None:
            if resident:
                self._holders.setdefault(model_id, set()).add(index)
                self.served.setdefault(model_id, set()).add(index)
            else:
                self._holders.get(model_id, set()).discard(index)

        return changed

    def route(self, model_id: str, t_s: float) -> int:
        if self._instances == 1:
            return 0
        queues = self._queues
        holders = self._holders.get(model_id)
        best, busy = -1, 0
        if holders:
            busy, best = min((queues[i].ongoing(t_s), i) for i in holders)
            if busy < self._max_ongoing:
                return best
        # Not held, or every holder full: of the others with room, the most free budget, then
        # the fewest models; it loads a copy.
        caches = self._caches
        room = [
            (-caches[i].free_bytes, caches[i].models, i)
            for i in range(self._instances)
            if not (holders and i in holders) and queues[i].ongoing(t_s) < self._max_ongoing
        ]
        if room:
            return min(room)[2]
        # Everyone is full: Serve holds the request until a slot frees; the least busy holder
        # (or instance) takes it here, and its queue accounts for the wait.
        if best >= 0:
            return best
        return min(range(self._instances), key=lambda i: queues[i].ongoing(t_s))
