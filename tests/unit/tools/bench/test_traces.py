"""Traces: the same seed gives the same trace, and each kind has the shape it claims."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tenantserve.tools.bench import trace_kinds, traces
from tenantserve.tools.bench.traces import Trace, TraceRequest

IDS = [f"tenant-{i:03d}/model-{i:04d}" for i in range(200)]


@pytest.mark.parametrize("kind", traces.KINDS)
def test_same_seed_same_trace_and_mean_rate_holds(kind: str) -> None:
    one = traces.generate(kind, IDS, rate=100, duration_s=60, seed=7)
    again = traces.generate(kind, IDS, rate=100, duration_s=60, seed=7)
    other = traces.generate(kind, IDS, rate=100, duration_s=60, seed=8)
    assert one == again
    assert one.requests != other.requests
    assert 0.9 * 6000 < len(one) < 1.1 * 6000  # Poisson: sd ~ 77 around 6000
    times = [r.t_s for r in one]
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < 60
    assert set(one.model_ids()) <= set(IDS)


def test_zipf_rank_frequency_slope_is_about_s() -> None:
    for s in (0.8, 1.1, 1.4):
        trace = trace_kinds.zipf(IDS, rate=2000, duration_s=100, seed=1, s=s)
        counts = np.array(sorted(trace.counts().values(), reverse=True)[:50], dtype=float)
        slope = np.polyfit(np.log(np.arange(1, 51)), np.log(counts), 1)[0]
        assert abs(-slope - s) < 0.15, (s, slope)


def test_zipf_hot_set_is_a_seeded_shuffle() -> None:
    hottest = {
        trace_kinds.zipf(IDS, rate=200, duration_s=30, seed=k).counts().most_common(1)[0][0]
        for k in range(5)
    }
    assert len(hottest) > 1  # not always the first id


def test_uniform_spreads_evenly() -> None:
    counts = trace_kinds.uniform(IDS, rate=2000, duration_s=50, seed=2).counts()
    assert len(counts) == len(IDS)
    mean = 100_000 / len(IDS)
    assert all(abs(n - mean) < 6 * mean**0.5 for n in counts.values())


def test_shifting_draws_a_new_hot_set_every_period() -> None:
    trace = trace_kinds.shifting(IDS, rate=100, duration_s=200, seed=3, every=5000)

    def top(start: int) -> set[str]:
        counts = Counter(r.model_id for r in trace.requests[start : start + 5000])
        return {m for m, _ in counts.most_common(5)}

    periods = [top(start) for start in range(0, 15_000, 5000)]
    # Five hot models of 200 drawn afresh: a repeat is rare; the same five, never.
    assert all(len(a & b) <= 2 for a, b in itertools.pairwise(periods))
    counts = Counter(r.model_id for r in trace.requests[:5000]).most_common()
    assert counts[0][1] > 10 * counts[49][1]  # within a period it is Zipf


def test_diurnal_hot_set_shifts_and_rate_peaks_midday() -> None:
    trace = trace_kinds.diurnal(IDS, rate=500, duration_s=80, seed=3, phases=4, amplitude=0.6)

    def top(lo: float, hi: float) -> set[str]:
        counts = Counter(r.model_id for r in trace if lo <= r.t_s < hi)
        return {m for m, _ in counts.most_common(10)}

    assert not top(0, 20) & top(60, 80)
    assert not top(20, 40) & top(40, 60)
    midday = sum(20 <= r.t_s < 60 for r in trace)
    assert midday > 0.6 * len(trace)  # the cosine day puts ~69% of requests in the middle half


def test_flood_tenant_takes_its_share_inside_the_window_only() -> None:
    trace = trace_kinds.flood(IDS, rate=500, duration_s=40, seed=4, tenant="tenant-007", share=0.6)
    inside = [r for r in trace if 10 <= r.t_s < 30]
    outside = [r for r in trace if not 10 <= r.t_s < 30]
    flood_share = sum(traces.tenant_of(r.model_id) == "tenant-007" for r in inside) / len(inside)
    assert abs(flood_share - 0.6) < 0.03
    assert not any(traces.tenant_of(r.model_id) == "tenant-007" for r in outside)


def test_flood_defaults_to_a_quiet_tenant() -> None:
    trace = trace_kinds.flood(IDS, rate=200, duration_s=20, seed=5)
    tenant = trace.description.split("tenant=")[1].split(",")[0]
    before = Counter(r.model_id for r in trace if r.t_s < 5)
    assert not any(traces.tenant_of(m) == tenant for m in before)


def test_bursts_concentrate_on_a_few_models_during_bursts() -> None:
    trace = trace_kinds.bursts(
        IDS, rate=300, duration_s=40, seed=6, period_s=10, burst_s=2, factor=6, burst_models=3
    )
    in_burst = [r for r in trace if (r.t_s - 5) % 10 < 2]
    calm = [r for r in trace if (r.t_s - 5) % 10 >= 2]
    assert len(in_burst) / 8 > 4 * len(calm) / 32  # per second: ~6x the background
    first_burst = Counter(r.model_id for r in trace if 5 <= r.t_s < 7)
    top3 = sum(n for _, n in first_burst.most_common(3))
    assert top3 > 0.7 * sum(first_burst.values())


@pytest.mark.parametrize("name", ["trace.jsonl", "trace.csv"])
def test_save_and_load_round_trip(tmp_path: Path, name: str) -> None:
    trace = trace_kinds.zipf(IDS[:20], rate=50, duration_s=5, seed=9)
    path = tmp_path / name
    traces.save_trace(path, trace)
    loaded = traces.load_trace(path)
    assert loaded.requests == trace.requests


def test_load_sorts_by_time_and_rejects_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t_s,model_id\n2.5,acme/b\n0.5,acme/a\n")
    assert traces.load_trace(path).requests == (
        TraceRequest(0.5, "acme/a"),
        TraceRequest(2.5, "acme/b"),
    )
    for bad in (
        '{"t_s": -1, "model_id": "a"}\n',
        '{"t_s": 1}\n',
        '{"t_s": "x", "model_id": "a"}\n',
    ):
        path = tmp_path / "bad.jsonl"
        path.write_text(bad)
        with pytest.raises(ValueError, match=r"bad\.jsonl"):
            traces.load_trace(path)
    (tmp_path / "nohead.csv").write_text("1.0,acme/a\n")
    with pytest.raises(ValueError, match="header"):
        traces.load_trace(tmp_path / "nohead.csv")


def test_generate_rejects_unknown_kinds_and_parameters() -> None:
    with pytest.raises(ValueError, match="unknown trace kind"):
        traces.generate("poisson", IDS, rate=1, duration_s=1, seed=0)
    with pytest.raises(ValueError, match="bad parameters for a uniform trace"):
        traces.generate("uniform", IDS, rate=1, duration_s=1, seed=0, s=1.2)
    with pytest.raises(ValueError, match="distinct"):
        trace_kinds.zipf(["a", "a"], rate=1, duration_s=1, seed=0)
    with pytest.raises(ValueError, match="must own some"):
        trace_kinds.flood(IDS, rate=1, duration_s=1, seed=0, tenant="nobody")


def test_trace_helpers() -> None:
    trace = Trace((TraceRequest(0.0, "a/x"), TraceRequest(1.0, "b/y"), TraceRequest(2.0, "a/x")))
    assert trace.model_ids() == ["a/x", "b/y"]
    assert trace.counts() == Counter({"a/x": 2, "b/y": 1})
    assert trace.duration_s == 2.0
    assert trace[1].model_id == "b/y"
    assert Trace(()).duration_s == 0.0
    window = trace.between(0.5, 2.0)
    assert window.requests == (TraceRequest(0.5, "b/y"),)
