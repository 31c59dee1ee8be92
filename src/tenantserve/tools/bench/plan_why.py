"""Why a plan's count is what it is: the sentence printed under each instance type."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tenantserve.tools.bench.fleet_profile import FleetProfile
from tenantserve.tools.bench.fleet_sim import FleetRun, rate_bound

if TYPE_CHECKING:
    from tenantserve.tools.bench.plan import InstanceType, Options, Prediction


def service_floor_s(
    trace: Sequence[tuple[float, str]], profile: FleetProfile, request_cpu_s: float
) -> float:
    """The 99th percentile of the requests' own service time (handling and inference): what
    the p99 would be with no queue and no load. No number or size of instances beats it."""
    counts = Counter(model_id for _, model_id in trace)
    seen = 0
    rank = min(len(trace) - 1, int(0.99 * len(trace)))
    for model_id in sorted(counts, key=lambda m: profile.models[m].inference_s):
        seen += counts[model_id]
        if seen > rank:
            return request_cpu_s + profile.models[model_id].inference_s
    return 0.0


def explain(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance: InstanceType,
    opts: Options,
    row: Prediction,
    run: FleetRun,
    *,
    headline: str,
    target_s: float,
    fewer: FleetRun | None = None,
) -> str:
    """For a miss, ``headline`` (how the search ended) and what holds the p99 up. For a
    match, whether the hot model spread, and what one instance fewer (``fewer``) missed by."""
    if not row.meets_target:
        return f"{headline} {_diagnosis(trace, profile, instance, opts, run, target_s)}"
    said = _spread_note(trace, profile, instance, opts, row)
    if fewer is not None:
        why = _diagnosis(trace, profile, instance, opts, fewer, target_s)
        said += f" With {row.instances - 1}: {why[0].lower()}{why[1:]}" if why else ""
    return said.strip()


def floor_headline(trace: Sequence[tuple[float, str]], profile: FleetProfile, opts: Options,
                   target_s: float, floor_s: float) -> str:  # fmt: skip
    """Why no count meets a target below one request's own service time."""
    slowest = max({m for _, m in trace}, key=lambda m: profile.models[m].inference_s)
    return (
        f"No count meets a p99 of {_ms(target_s)}: 1% of requests take {_ms(floor_s)} or more "
        f"on their own ({_ms(opts.request_cpu_s)} of request handling plus inference; "
        f"{slowest} takes {_ms(profile.models[slowest].inference_s)} per inference), before "
        f"any queue or load. Raise --p99-target-ms above {_ms(floor_s)}; the count shown is "
        "the fewest whose cores do the work."
    )


def _spread_note(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance: InstanceType,
    opts: Options,
    row: Prediction,
) -> str:
    if row.hot_model_copies < 2:
        return ""
    hot = row.hot_model
    rate = sum(1 for _, m in trace if m == hot) / _span(trace)
    one = rate_bound(instance.cores, opts.request_cpu_s, profile.models[hot].inference_s)
    return (
        f"{hot} ({rate:,.0f} req/s; one instance serves at most {one:,.0f} req/s of it) "
        f"spread over {row.hot_model_copies} instances."
    )


def _diagnosis(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance: InstanceType,
    opts: Options,
    run: FleetRun,
    target_s: float,
) -> str:
    """What made requests slow in ``run`` (complete, or as far as it went)."""
    served = len(run.latencies)
    budget = instance.memory_bytes - opts.overhead_bytes
    too_big = sorted(
        {m for _, m in trace if profile.models[m].resident_bytes > budget},
        key=lambda m: -profile.models[m].resident_bytes,
    )
    if too_big:
        need = profile.models[too_big[0]].resident_bytes
        return (
            f"{too_big[0]} needs {_mib(need)}, more than the {_mib(budget)} an instance has "
            f"for models after --overhead ({len(too_big)} such "
            f"model{'s' if len(too_big) > 1 else ''}): the server would refuse their requests. "
            "Use an instance with more memory."
        )
    slow = [i for i, latency in enumerate(run.latencies) if latency > target_s]
    cold = [i for i in slow if run.cold[i]]
    if not slow:
        return ""
    loading = run.loading_s / max(sum(run.busy_s_per_instance), 1e-9)
    if len(cold) * 2 >= len(slow) or loading >= 0.5:
        load_s = statistics.median(profile.models[m].load_s for m in run.holders)
        first = sum(len(held) for held in run.holders.values())  # a first call per copy
        said = (
            f"Loads hold the p99 up: {len(cold) / len(slow):.0%} of the requests over the "
            f"target wait for their model's load, and loads take {loading:.0%} of the cores' "
            f"busy time ({run.loads:,} loads of about {_ms(load_s)}; hit ratio "
            f"{run.hits / served:.3f})"
        )
        if run.loads <= 1.1 * first:
            return said + (
                ": nearly all are first calls as the fleet starts, so a longer trace "
                "(--duration-s) weighs them less."
            )
        return said + ": instances with more memory keep more models resident."
    by_model = Counter(trace[i][1] for i in slow if not run.cold[i])
    model_id, count = by_model.most_common(1)[0]
    copies = len(run.holders.get(model_id, ()))
    # One model's queue is the cause only where it could spread further.
    if count * 2 < len(slow) - len(cold) or copies >= len(run.requests_per_instance):
        span_s = _span(trace[:served])
        busy = [busy_s / (instance.cores * span_s) for busy_s in run.busy_s_per_instance]
        loop = [n * opts.request_cpu_s / span_s for n in run.requests_per_instance]
        return (
            f"Requests queue on the instances (each handles one request at a time on its event "
            f"loop, {_ms(opts.request_cpu_s)} each, then runs it on a core): the trace asks "
            f"{sum(loop) / len(loop):.0%} of their loops' time and {sum(busy) / len(busy):.0%} "
            f"of their cores' (the busiest instance's, {max(loop):.0%} and {max(busy):.0%})."
        )
    rate = sum(1 for _, m in trace[:served] if m == model_id) / _span(trace[:served])
    cores = instance.cores
    most = rate_bound(cores, opts.request_cpu_s, profile.models[model_id].inference_s)
    deepest = math.floor(target_s * most)  # the queue whose last request meets it
    said = (
        f"{model_id} ({rate:,.0f} req/s; one instance serves at most {most:,.0f} "
        f"req/s of it) is slow on the {copies} instance{'s' if copies != 1 else ''} holding "
        "it."
    )
    if deepest < opts.max_ongoing:
        said += (
            f" A holder spills it to another instance only at {opts.max_ongoing} ongoing "
            f"requests (--max-ongoing-requests), and that many at {most:,.0f} req/s take up "
            f"to {_ms(opts.max_ongoing / most)}: with --max-ongoing-requests "
            f"{max(1, deepest)} it spreads before its queue passes the target."
        )
    return said


def _span(trace: Sequence[tuple[float, str]]) -> float:
    return max(trace[-1][0] - trace[0][0], 1e-9) if trace else 1.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.3g} ms" if seconds < 1 else f"{seconds * 1000:,.0f} ms"


def _mib(nbytes: int) -> str:
    return f"{nbytes / 1024**2:,.0f} MiB"
