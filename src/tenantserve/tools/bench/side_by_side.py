"""What the side-by-side benchmarks share: a synthetic fleet kept between runs, a Zipf sequence
of its ids, and a process's CPU seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil

from tenantserve.tools.fleet.synth import write_fleet

_COMPLETE = ".complete"  # written last: a fleet cut short by an interrupted run is rebuilt


def kept_fleet(store: Path, *, models: int, size_mb: float) -> list[str]:
    """The ids of a synthetic fleet in ``store``, written once and reused by later runs."""
    if not (store / _COMPLETE).exists():
        write_fleet(store, models=models, size_bytes=int(size_mb * 1e6), seed=0)
        (store / _COMPLETE).touch()
    return sorted(p.parent.relative_to(store).as_posix() for p in store.glob("*/*/model.onnx"))


def zipf_sequence(ids: list[str], s: float, n: int, seed: int) -> list[str]:
    """``n`` ids drawn with Zipf popularity ``s`` over the order of ``ids``."""
    ranks = np.arange(1, len(ids) + 1, dtype=float)
    weights = ranks**-s / (ranks**-s).sum()
    picks = np.random.default_rng(seed).choice(len(ids), size=n, p=weights)
    return [ids[i] for i in picks]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process ``pid`` has used so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
