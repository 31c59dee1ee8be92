"""Capacity planning: a fleet profile and a trace, served by simulated instances of each size.

The fleet (:mod:`~tenantserve.tools.bench.fleet_sim`) runs the server's own cache code per instance
behind the Ray deployment's affinity router, so a hot model spreads over replicas. The search
here finds, per instance size, the fewest instances whose predicted p99 meets the target, and
:mod:`~tenantserve.tools.bench.plan_why` says why when none does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tenantserve.cache.loader import OVERHEAD_SHARE
from tenantserve.tools.bench.fleet_profile import FleetProfile as FleetProfile
from tenantserve.tools.bench.fleet_profile import ModelCost as ModelCost
from tenantserve.tools.bench.fleet_profile import profile_store as profile_store
from tenantserve.tools.bench.fleet_sim import FleetRun, FleetShape, Progress, run_fleet

# What one request costs beyond the model itself (HTTP parsing, JSON, routing), taken one
# request at a time on the server's event loop (fleet_sim.CoreQueue): 2 cores / 1,565 req/s
# measured with wrk on a resident model (benchmarks/RESULTS.md). The suite's all-resident run
# (10 MB models, 16 clients) reached 868 req/s, 1.15 ms a request.
DEFAULT_REQUEST_CPU_S = 0.0013
# `tenantserve ray deploy --max-ongoing-requests`: a holder this busy spills its model.
DEFAULT_MAX_ONGOING = 16
# Doubling the instances "stops helping" when the share of requests over the target stays
# above this fraction of what it was.
_PLATEAU = 0.95

OnRun = Callable[[str, int], Progress | None]
"""Told each simulation's instance type and count; may return a per-request callback."""


@dataclass(frozen=True, slots=True)
class InstanceType:
    """An instance size: memory (bytes) and cores. Written ``8GiB:2``."""

    memory_bytes: int
    cores: int
    label: str


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a fleet of ``instances`` times ``instance`` is predicted to do with the trace."""

    instance: str
    instances: int
    hit_ratio: float
    cold_starts_per_min: float
    p50_s: float
    p99_s: float
    requests: int
    meets_target: bool
    rate_per_s: float = 0.0
    """Requests per second, the whole fleet."""
    busiest_rate_per_s: float = 0.0
    """Requests per second on the busiest instance."""
    cpu_mean: float = 0.0
    """Share of an instance's cores busy (requests and loads), mean over the instances."""
    cpu_max: float = 0.0
    """The same, on the busiest instance."""
    hot_model: str = ""
    """The model with the most requests."""
    hot_model_copies: int = 0
    """Instances that served it (loaded a copy)."""
    reason: str = ""
    """Why the target is missed, or why the count is what it is; empty when nothing to say."""


@dataclass(frozen=True, slots=True)
class Options:
    """Everything but the instance count that shapes one simulation."""

    overhead_bytes: int = 512 * 1024**2
    policy: str = "lru"
    request_cpu_s: float = DEFAULT_REQUEST_CPU_S
    load_slots: int = 0
    """Loads side by side per instance; 0: its cores (the server's --max-concurrent-loads)."""
    min_residency_s: float = 1.0
    max_ongoing: int = DEFAULT_MAX_ONGOING
    heap_share: float = 1 / OVERHEAD_SHARE
    """Of the budget, what the server charges to its heap's growth while models churn."""

    def shape(self, instance: InstanceType, instances: int, fleet_bytes: int = 0) -> FleetShape:
        budget = instance.memory_bytes - self.overhead_bytes
        if budget <= 0:
            raise ValueError(f"{instance.label}: the overhead leaves no memory for models")
        if fleet_bytes > budget * instances:
            # Models churn: the server charges its heap's growth beyond the models to the
            # budget, up to its cap (a quarter), so that RSS stays within it. The quarter
            # run reached the cap (354 of 478 MiB held by models); planned without it, the hit
            # ratio came out 0.803 against 0.733 measured.
            budget -= int(budget * self.heap_share)
        return FleetShape(
            instances, instance.cores, budget, self.max_ongoing, self.policy,
            self.load_slots or instance.cores,
            self.min_residency_s, self.request_cpu_s,
        )  # fmt: skip


def simulate(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance: InstanceType,
    *,
    instances: int = 1,
    p99_target_s: float = math.inf,
    progress: Progress | None = None,
    clients: int | None = None,
    **options: float | int | str,
) -> Prediction:
    """Serve ``trace`` on ``instances`` of ``instance``: each request routed by model (holders
    first, spilling when they are full), replayed through that instance's real cache, then
    queued on its cores. ``options`` are :class:`Options` fields.

    ``min_residency_s`` is the server's default (``--min-residency-s``) for the cost policy.
    ``load_slots`` is the instance's cores by default, as the server's
    ``--max-concurrent-loads``: loads of known size run side by side. With ``clients``, a
    closed loop of that many clients replays the trace's order (see :func:`run_fleet`)."""
    opts = Options(**options)  # type: ignore[arg-type]
    shape = opts.shape(instance, instances, profile.total_bytes)
    run = run_fleet(trace, profile, shape, progress=progress, clients=clients)
    # A closed loop's rate is the one it reached: the time the simulation took, not the trace's.
    span_s = run.finished_s - trace[0][0] if clients and trace else None
    return predict(trace, instance, instances, run, p99_target_s, span_s=span_s)


def predict(
    trace: Sequence[tuple[float, str]],
    instance: InstanceType,
    instances: int,
    run: FleetRun,
    p99_target_s: float,
    *,
    span_s: float | None = None,
) -> Prediction:
    """A complete run's figures (over ``span_s``, or the trace's own span)."""
    if span_s is None:
        span_s = trace[-1][0] - trace[0][0] if trace else 1.0
    span_s = max(span_s, 1e-9)
    latencies = sorted(run.latencies)
    p99 = pct(latencies, 0.99)
    hot = max(_counts(trace).items(), key=lambda item: item[1], default=("", 0))[0]
    capacity = instance.cores * span_s
    return Prediction(
        instance=instance.label, instances=instances,
        hit_ratio=run.hits / len(trace) if trace else 0.0,
        cold_starts_per_min=run.loads / (span_s / 60),
        p50_s=pct(latencies, 0.5), p99_s=p99, requests=len(trace),
        meets_target=p99 <= p99_target_s and run.refused == 0,
        rate_per_s=len(trace) / span_s,
        busiest_rate_per_s=max(run.requests_per_instance, default=0) / span_s,
        cpu_mean=sum(run.busy_s_per_instance) / instances / capacity,
        cpu_max=max(run.busy_s_per_instance, default=0.0) / capacity,
        hot_model=hot, hot_model_copies=len(run.holders.get(hot, ())),
    )  # fmt: skip


def pct(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def slow_share(run: FleetRun) -> float:
    """Share of the requests served that took longer than the run's ``slow_s``."""
    return run.slow / max(1, len(run.latencies))


def _counts(trace: Sequence[tuple[float, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, model_id in trace:
        counts[model_id] = counts.get(model_id, 0) + 1
    return counts


def plan(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance_types: Sequence[InstanceType],
    *,
    p99_target_s: float,
    max_instances: int = 64,
    on_run: OnRun | None = None,
    **options: float | int | str,
) -> list[Prediction]:
    """For each instance type, the fewest instances whose predicted p99 meets the target.

    The search starts at the fewest instances whose cores can do the trace's work, steps up
    by 1, 2, 4 … until the target is met, then bisects the last step. It gives up when twice
    the instances leave as large a share of requests over the target, and at
    ``max_instances``; each row's ``reason`` says why."""
    from tenantserve.tools.bench.plan_why import explain, floor_headline, service_floor_s

    opts = Options(**options)  # type: ignore[arg-type]
    floor_s = service_floor_s(trace, profile, opts.request_cpu_s)
    below_floor = floor_s > p99_target_s
    rows = []
    for instance in instance_types:
        search = _Search(trace, profile, instance, opts, p99_target_s, max_instances, on_run)
        count, run, headline = search.run(only_lowest=below_floor)
        if below_floor:
            headline = floor_headline(trace, profile, opts, p99_target_s, floor_s)
        row = predict(trace, instance, count, run, p99_target_s)
        fewer = search.runs.get(count - 1) if row.meets_target else None
        why = explain(trace, profile, instance, opts, row, run, headline=headline,
                      target_s=p99_target_s, fewer=fewer)  # fmt: skip
        rows.append(replace(row, reason=why))
    return rows


class _Search:
    """The fewest instances of one type that meet the target, and the runs that showed it."""

    def __init__(
        self,
        trace: Sequence[tuple[float, str]],
        profile: FleetProfile,
        instance: InstanceType,
        opts: Options,
        target_s: float,
        cap: int,
        on_run: OnRun | None,
    ) -> None:
        self._trace, self._profile, self._instance = trace, profile, instance
        self._opts, self._target_s, self._cap, self._on_run = opts, target_s, cap, on_run
        # The p99 misses once this many requests are slow: a run can stop there.
        self._slow_allowed = len(trace) - min(len(trace) - 1, int(0.99 * len(trace)))
        self.runs: dict[int, FleetRun] = {}

    def _meets(self, count: int, *, whole: bool = False) -> bool:
        progress = self._on_run(self._instance.label, count) if self._on_run else None
        shape = self._opts.shape(self._instance, count, self._profile.total_bytes)
        run = run_fleet(
            self._trace, self._profile, shape,
            slow_s=self._target_s, give_up_after=None if whole else self._slow_allowed,
            progress=progress,
        )  # fmt: skip
        self.runs[count] = run
        p99 = pct(sorted(run.latencies), 0.99)
        return run.complete and run.refused == 0 and p99 <= self._target_s

    def lowest(self) -> int:
        """The fewest instances whose loops and cores can do the trace's work (loads aside)."""
        trace, models = self._trace, self._profile.models
        if len(trace) < 2:
            return 1
        loop_s = self._opts.request_cpu_s * len(trace)
        cores_s = (loop_s + sum(models[m].inference_s for _, m in trace)) / self._instance.cores
        span_s = trace[-1][0] - trace[0][0]
        return max(1, min(self._cap, math.ceil(max(loop_s, cores_s) / span_s)))

    def run(self, *, only_lowest: bool) -> tuple[int, FleetRun, str]:
        """The count, its complete run, and how the search ended (for a miss)."""
        low = self.lowest()
        if only_lowest:  # no count can meet the target: show the least that does the work
            self._meets(low, whole=True)
            return low, self.runs[low], ""
        count, step, missed = low, 1, 0
        while not self._meets(count):
            missed = count
            if count >= self._cap:
                return count, self._whole(count), (
                    f"Still misses the target with {count} instances, the search's cap "
                    "(--max-instances)."
                )  # fmt: skip
            flat = self._plateau(count)
            if flat is not None:
                return flat, self.runs[flat], (
                    f"More instances stop helping: with {count}, "
                    f"{slow_share(self.runs[count]):.1%} of requests still miss the target "
                    f"({slow_share(self.runs[flat]):.1%} with {flat})."
                )  # fmt: skip
            count, step = min(self._cap, count + step), step * 2
        met = count
        if met == low and low > 1:  # the work bound is loose for short traces: check below
            if self._meets(low - 1):
                met = low - 1
            else:
                missed = low - 1
        while met - missed > 1:  # the first count that meets lies in (missed, met]
            middle = (missed + met) // 2
            if self._meets(middle):
                met = middle
            else:
                missed = middle
        return met, self._whole(met), ""

    def _plateau(self, count: int) -> int | None:
        """The smaller count when ``count`` instances do no better than half as many: twice
        the instances leave as large a share of requests over the target. Runs that gave up
        early measured only the start of the trace: a suspected plateau is run whole."""
        earlier = [c for c in self.runs if c <= count // 2]
        if not earlier:
            return None
        before = max(earlier)
        if slow_share(self.runs[count]) < _PLATEAU * slow_share(self.runs[before]):
            return None
        after, before_run = self._whole(count), self._whole(before)
        return before if slow_share(after) >= _PLATEAU * slow_share(before_run) else None

    def _whole(self, count: int) -> FleetRun:
        if not self.runs[count].complete:
            self._meets(count, whole=True)
        return self.runs[count]
