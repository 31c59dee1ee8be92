"""Trace kinds, each deterministic for its arguments (same seed, same trace).

Arrivals are a Poisson process whose *mean* rate over the whole trace is ``rate``, so traces of
different kinds with the same rate and duration hold about the same number of requests.

- ``zipf``: popularity of rank ``r`` ∝ ``1 / r**s``; ranks are a seeded shuffle of the ids.
- ``uniform``: every model equally likely (churn: no hot set).
- ``bursts``: Zipf, plus every ``period_s`` a burst of ``burst_s`` seconds at ``factor`` times the
  background rate whose extra requests go to ``burst_models`` random models (batch jobs waking).
- ``shifting``: Zipf whose ranking is drawn afresh every ``every`` requests (popularity that
  moves on abruptly: the hot models of one period are a random draw in the next).
- ``diurnal``: Zipf whose ranking rotates by ``n // phases`` models at each of ``phases`` equal
  periods (tenants in other time zones), under a rate that swings by ± ``amplitude``.
- ``flood``: one tenant (first id segment; default, the owner of the least popular model)
  sends ``share`` of the requests between ``start_frac`` and ``end_frac`` of the trace, spread
  over its models, while the other tenants run Zipf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from tenantserve.tools.bench.traces import Trace, TraceRequest, tenant_of

DEFAULT_S = 1.1

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]


def zipf(
    model_ids: Sequence[str], *, rate: float, duration_s: float, seed: int, s: float = DEFAULT_S
) -> Trace:
    """Zipf popularity with exponent ``s`` over a seeded shuffle of ``model_ids``."""
    ids, rng = _start(model_ids, rate, duration_s, seed)
    order = rng.permutation(len(ids))
    times = _arrivals(rng, duration_s, peak_rate=rate)
    ranks = rng.choice(len(ids), size=len(times), p=zipf_weights(len(ids), s))
    return _trace(times, order[ranks], ids, f"zipf(s={s})", rate, duration_s, seed)


def uniform(model_ids: Sequence[str], *, rate: float, duration_s: float, seed: int) -> Trace:
    """Every model equally likely: the most churn a cache can see."""
    ids, rng = _start(model_ids, rate, duration_s, seed)
    times = _arrivals(rng, duration_s, peak_rate=rate)
    picks = rng.integers(0, len(ids), size=len(times))
    return _trace(times, picks, ids, "uniform", rate, duration_s, seed)


def shifting(
    model_ids: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    seed: int,
    s: float = DEFAULT_S,
    every: int = 5000,
) -> Trace:
    """Zipf over a seeded shuffle of ``model_ids``, shuffled again every ``every`` requests."""
    ids, rng = _start(model_ids, rate, duration_s, seed)
    if every < 1:
        raise ValueError("need every >= 1")
    times = _arrivals(rng, duration_s, peak_rate=rate)
    ranks = rng.choice(len(ids), size=len(times), p=zipf_weights(len(ids), s))
    orders = np.array([rng.permutation(len(ids)) for _ in range(len(times) // every + 1)])
    picks = orders[np.arange(len(times)) // every, ranks]
    return _trace(times, picks, ids, f"shifting(s={s}, every={every})", rate, duration_s, seed)


def bursts(
    model_ids: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    seed: int,
    s: float = DEFAULT_S,
    period_s: float = 10.0,
    burst_s: float = 2.0,
    factor: float = 5.0,
    burst_models: int = 5,
) -> Trace:
    """Zipf background plus periodic bursts aimed at a few random (often cold) models."""
    ids, rng = _start(model_ids, rate, duration_s, seed)
    if not (0 < burst_s <= period_s) or factor < 1 or burst_models < 1:
        raise ValueError("need 0 < burst_s <= period_s, factor >= 1 and burst_models >= 1")
    # Bursts start half a period in, so the trace opens with plain background traffic.
    starts = np.arange(period_s / 2, duration_s, period_s)
    burst_time = float(np.minimum(starts + burst_s, duration_s).sum() - starts.sum())
    base = rate * duration_s / (duration_s + (factor - 1) * burst_time)
    order = rng.permutation(len(ids))
    times = _arrivals(rng, duration_s, peak_rate=base)
    picks = order[rng.choice(len(ids), size=len(times), p=zipf_weights(len(ids), s))]
    extra_times: list[_Floats] = [times]
    extra_picks: list[_Ints] = [picks]
    for start in starts:
        length = min(burst_s, duration_s - start)
        targets = rng.choice(len(ids), size=min(burst_models, len(ids)), replace=False)
        n = rng.poisson(base * (factor - 1) * length)
        extra_times.append(start + rng.uniform(0, length, n))
        extra_picks.append(targets[rng.integers(0, len(targets), n)])
    all_times = np.concatenate(extra_times)
    sorter = np.argsort(all_times, kind="stable")
    desc = f"bursts(s={s}, period_s={period_s}, burst_s={burst_s}, factor={factor})"
    return _trace(
        all_times[sorter], np.concatenate(extra_picks)[sorter], ids, desc, rate, duration_s, seed
    )


def diurnal(
    model_ids: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    seed: int,
    s: float = DEFAULT_S,
    phases: int = 4,
    amplitude: float = 0.5,
) -> Trace:
    """Zipf whose hot set moves on at each of ``phases`` periods, under a day-shaped rate."""
    ids, rng = _start(model_ids, rate, duration_s, seed)
    if phases < 1 or not 0 <= amplitude < 1:
        raise ValueError("need phases >= 1 and 0 <= amplitude < 1")
    order = rng.permutation(len(ids))

    def rate_at(t: _Floats) -> _Floats:
        # One "day" per trace, starting at night; the sine integrates to 0, so the mean is rate.
        return rate * (1 - amplitude * np.cos(2 * math.pi * t / duration_s))

    times = _arrivals(rng, duration_s, peak_rate=rate * (1 + amplitude), rate_at=rate_at)
    ranks = rng.choice(len(ids), size=len(times), p=zipf_weights(len(ids), s))
    phase = np.minimum((times / duration_s * phases).astype(np.int64), phases - 1)
    shifted = (ranks + phase * (len(ids) // phases)) % len(ids)
    desc = f"diurnal(s={s}, phases={phases}, amplitude={amplitude})"
    return _trace(times, order[shifted], ids, desc, rate, duration_s, seed)


def flood(
    model_ids: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    seed: int,
    s: float = DEFAULT_S,
    tenant: str | None = None,
    share: float = 0.5,
    start_frac: float = 0.25,
    end_frac: float = 0.75,
) -> Trace:
    """Zipf over the other tenants while ``tenant`` floods its own models for a while."""
    ids, rng = _start(model_ids, rate, duration_s, seed)
    if not 0 < share < 1 or not 0 <= start_frac < end_frac <= 1:
        raise ValueError("need 0 < share < 1 and 0 <= start_frac < end_frac <= 1")
    order = rng.permutation(len(ids))
    flooder = tenant if tenant is not None else tenant_of(ids[order[-1]])
    own = np.array([i for i in order if tenant_of(ids[i]) == flooder], dtype=np.int64)
    others = np.array([i for i in order if tenant_of(ids[i]) != flooder], dtype=np.int64)
    if not len(own) or not len(others):
        raise ValueError(f"tenant {flooder!r} must own some, but not all, of the models")
    window_s = (end_frac - start_frac) * duration_s
    # Mean rate over the trace is `rate`; inside the window the flood is `share` of it.
    flood_per_base = share / (1 - share)
    base = rate * duration_s / (duration_s + window_s * flood_per_base)
    times = _arrivals(rng, duration_s, peak_rate=base)
    picks = others[rng.choice(len(others), size=len(times), p=zipf_weights(len(others), s))]
    n_flood = rng.poisson(base * flood_per_base * window_s)
    flood_times = start_frac * duration_s + rng.uniform(0, window_s, n_flood)
    flood_picks = own[rng.integers(0, len(own), n_flood)]
    all_times = np.concatenate([times, flood_times])
    sorter = np.argsort(all_times, kind="stable")
    all_picks = np.concatenate([picks, flood_picks])[sorter]
    desc = f"flood(s={s}, tenant={flooder}, share={share}, window={start_frac}-{end_frac})"
    return _trace(all_times[sorter], all_picks, ids, desc, rate, duration_s, seed)


def zipf_weights(n: int, s: float) -> _Floats:
    """Probabilities of ranks 1..n under Zipf's law with exponent ``s`` (they sum to 1)."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    result: _Floats = weights / weights.sum()
    return result


def _start(
    model_ids: Sequence[str], rate: float, duration_s: float, seed: int
) -> tuple[list[str], np.random.Generator]:
    ids = list(model_ids)
    if not ids:
        raise ValueError("a trace needs at least one model id")
    if len(set(ids)) != len(ids):
        raise ValueError("model ids must be distinct")
    if not rate > 0 or not duration_s > 0:
        raise ValueError("rate and duration_s must be positive")
    return ids, np.random.default_rng(seed)


def _arrivals(
    rng: np.random.Generator,
    duration_s: float,
    *,
    peak_rate: float,
    rate_at: Callable[[_Floats], _Floats] | None = None,
) -> _Floats:
    """Poisson arrival times in [0, duration_s): uniform points at the peak rate, thinned."""
    times = np.sort(rng.uniform(0, duration_s, rng.poisson(peak_rate * duration_s)))
    if rate_at is None:
        return times
    keep = rng.uniform(0, peak_rate, len(times)) < rate_at(times)
    kept: _Floats = times[keep]
    return kept


def _trace(
    times: _Floats,
    picks: _Ints,
    ids: list[str],
    kind: str,
    rate: float,
    duration_s: float,
    seed: int,
) -> Trace:
    requests = tuple(
        TraceRequest(float(t), ids[i]) for t, i in zip(times.tolist(), picks.tolist(), strict=True)
    )
    desc = f"{kind} over {len(ids)} models, {rate:g} req/s for {duration_s:g} s, seed {seed}"
    return Trace(requests, desc)
