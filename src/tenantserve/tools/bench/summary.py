"""A run reduced to its headline figures: throughput, warm/cold latency, cache and server.

Latency percentiles count answered requests (status 200) only; everything else is in the
errors, by status (``0`` = connection error, ``-1`` = timeout).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tenantserve.tools.bench.results import RunResult


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles (seconds) over ``n`` requests."""

    n: int
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float


@dataclass(frozen=True)
class Summary:
    """The headline figures of one run."""

    label: str
    mode: str
    concurrency: int | None
    trace: str
    wall_s: float
    requests: int
    ok: int
    throughput_rps: float
    latency: LatencyStats | None
    warm: LatencyStats | None
    cold: LatencyStats | None
    classification: str
    hit_ratio: float | None
    client_hit_ratio: float
    loads: int | None
    evictions: int | None
    errors: dict[str, int]
    peak_rss_bytes: int | None
    peak_threads: int | None
    server_cpu_s: float | None
    client_cpu_s: float
    client_lag_p99_s: float


def latency_stats(seconds: Sequence[float]) -> LatencyStats | None:
    """Nearest-rank percentiles (no interpolation), or None for no requests."""
    if not seconds:
        return None
    values = np.asarray(seconds, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="inverted_cdf").tolist()
    return LatencyStats(len(values), p50, p90, p99, float(values.max()))


def summarize(run: RunResult) -> Summary:
    """Reduce a run's raw outcomes and samples to its :class:`Summary`."""
    ok = [o for o in run.outcomes if o.status == 200]
    first = run.samples[0].metrics if run.samples else {}
    last = run.samples[-1].metrics if run.samples else {}

    def delta(name: str) -> int | None:
        if name not in last:
            return None
        return round(last[name] - first.get(name, 0.0))

    hits, misses = delta("hits"), delta("misses")
    known = hits is not None and misses is not None and hits + misses > 0
    hit_ratio = hits / (hits + misses) if known else None  # type: ignore[operator]
    cpu = [s.cpu_s for s in run.samples if s.cpu_s is not None]
    rss = [s.rss_bytes for s in run.samples if s.rss_bytes is not None]
    threads = [s.threads for s in run.samples if s.threads is not None]
    errors = Counter(str(o.status) for o in run.outcomes if o.status != 200)
    return Summary(
        label=run.label,
        mode=run.mode,
        concurrency=run.concurrency,
        trace=run.trace,
        wall_s=run.wall_s,
        requests=len(run.outcomes),
        ok=len(ok),
        throughput_rps=len(ok) / run.wall_s if run.wall_s > 0 else 0.0,
        latency=latency_stats([o.latency_s for o in ok]),
        warm=latency_stats([o.latency_s for o in ok if not o.cold]),
        cold=latency_stats([o.latency_s for o in ok if o.cold]),
        classification=run.classification,
        hit_ratio=hit_ratio,
        client_hit_ratio=sum(not o.cold for o in ok) / len(ok) if ok else 0.0,
        loads=delta("loads"),
        evictions=delta("evictions"),
        errors=dict(sorted(errors.items())),
        peak_rss_bytes=max(rss) if rss else None,
        peak_threads=max(threads) if threads else None,
        server_cpu_s=cpu[-1] - cpu[0] if len(cpu) > 1 else None,
        client_cpu_s=run.client_cpu_s,
        client_lag_p99_s=float(np.percentile([o.lag_s for o in run.outcomes] or [0.0], 99)),
    )
