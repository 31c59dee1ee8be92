"""PNG plots of benchmark runs over time: latency, hit ratio and memory, one line per run."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tenantserve.tools.bench.results import RunResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

BIN_S = 1.0
_Floats = npt.NDArray[np.float64]


def write_plots(out_dir: Path, runs: Sequence[RunResult]) -> list[str]:
    """Write latency.png, hit_ratio.png and memory.png into ``out_dir``; return their names."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plots need matplotlib: pip install 'tenantserve[bench]' (or pass --no-plots)"
        ) from None

    written = []
    for name, title, draw in (
        ("latency.png", "Latency per second of send time (answered requests)", _latency),
        ("hit_ratio.png", "Cache hit ratio per second", _hit_ratio),
        ("memory.png", "Server memory", _memory),
    ):
        fig, ax = plt.subplots(figsize=(12, 4.5), layout="constrained")
        for run in runs:
            draw(ax, run)
        ax.set_title(title)
        ax.set_xlabel("seconds into the run")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def binned(times: Sequence[float], values: Sequence[float], q: float) -> tuple[_Floats, _Floats]:
    """Per :data:`BIN_S` bin of ``times``, the ``q``-quantile of ``values`` (bins with data)."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if not len(t):
        return np.empty(0), np.empty(0)
    bins = np.floor(t / BIN_S).astype(np.int64)
    order = np.argsort(bins, kind="stable")
    bins, v = bins[order], v[order]
    edges = np.flatnonzero(np.diff(bins)) + 1
    starts = bins[np.concatenate(([0], edges))]
    quantiles = [float(np.quantile(chunk, q)) for chunk in np.split(v, edges)]
    return ((starts + 0.5) * BIN_S).astype(np.float64), np.asarray(quantiles, dtype=np.float64)


def _latency(ax: Axes, run: RunResult) -> None:
    ok = [o for o in run.outcomes if o.status == 200]
    times = [o.t_s for o in ok]
    ms = [o.latency_s * 1000 for o in ok]
    x, p99 = binned(times, ms, 0.99)
    (line,) = ax.plot(x, p99, label=f"{run.label} p99")
    x, p50 = binned(times, ms, 0.5)
    ax.plot(x, p50, linestyle="--", color=line.get_color(), label=f"{run.label} p50")
    cold = [o for o in ok if o.cold]
    if cold:
        ax.scatter(
            [o.t_s for o in cold],
            [o.latency_s * 1000 for o in cold],
            s=4,
            color=line.get_color(),
            alpha=0.4,
            label=f"{run.label} cold",
        )
    ax.set_yscale("log")
    ax.set_ylabel("ms")


def _hit_ratio(ax: Axes, run: RunResult) -> None:
    counts = [
        (s.t_s, s.metrics["hits"], s.metrics["misses"])
        for s in run.samples
        if "hits" in s.metrics and "misses" in s.metrics
    ]
    series: list[tuple[float, float]] = []
    for (_, h0, m0), (t1, h1, m1) in itertools.pairwise(counts):
        if h1 + m1 > h0 + m0:
            series.append((t1, (h1 - h0) / (h1 + m1 - h0 - m0)))
    if series:
        ax.plot(*zip(*series, strict=True), label=f"{run.label} (server)")
    else:  # no /metrics (the floor): the client's warm/cold classification
        ok = [o for o in run.outcomes if o.status == 200]
        x, mean = _binned_mean([o.t_s for o in ok], [0.0 if o.cold else 1.0 for o in ok])
        ax.plot(x, mean, label=f"{run.label} (client)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("hits / requests")


def _memory(ax: Axes, run: RunResult) -> None:
    rss = [(s.t_s, s.rss_bytes / 2**20) for s in run.samples if s.rss_bytes is not None]
    if not rss:
        return
    (line,) = ax.plot(*zip(*rss, strict=True), label=f"{run.label} RSS")
    used = [
        (s.t_s, s.metrics["memory_used_bytes"] / 2**20)
        for s in run.samples
        if "memory_used_bytes" in s.metrics
    ]
    if used:
        ax.plot(
            *zip(*used, strict=True),
            linestyle="--",
            color=line.get_color(),
            label=f"{run.label} models (measured at load)",
        )
    budget = [
        s.metrics["memory_budget_bytes"] for s in run.samples if "memory_budget_bytes" in s.metrics
    ]
    if budget:
        ax.axhline(
            budget[-1] / 2**20, linestyle=":", color=line.get_color(), label=f"{run.label} budget"
        )
    ax.set_ylabel("MiB")


def _binned_mean(times: Sequence[float], values: Sequence[float]) -> tuple[_Floats, _Floats]:
    t = np.asarray(times, dtype=np.float64)
    if not len(t):
        return np.empty(0), np.empty(0)
    bins = np.floor(t / BIN_S).astype(np.int64)
    sums = np.bincount(bins, weights=np.asarray(values, dtype=np.float64))
    counts = np.bincount(bins)
    has = counts > 0
    centres: Any = (np.arange(len(counts))[has] + 0.5) * BIN_S
    return centres, sums[has] / counts[has]
