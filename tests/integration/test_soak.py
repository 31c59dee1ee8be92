"""A short soak (RELIABILITY 31, PR tier): steady Zipf traffic with churn, sampled every 0.5 s.

Open-loop traffic below capacity over a few hundred models, a quarter of which fit the budget,
so loads and evictions never stop. The server's RSS, open files and threads are sampled with
psutil throughout; none may creep, and every request sent must be answered. The long version
(minutes, at twice capacity) is ``benchmarks/bench_soak.py``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from fixtures.server import ProcessServer
from tenantserve.tools.bench.loadgen import LoadSpec, replay, warm_up
from tenantserve.tools.bench.traces import generate
from tenantserve.tools.fleet.synth import write_fleet

MODELS = 300
RATE_PER_S = 150.0
DURATION_S = 15.0
# A synthetic 16 kB model holds about 100 KiB once loaded: room for about a quarter of them.
BUDGET_BYTES = MODELS // 4 * 100 * 1024


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_bytes: int
    fds: int
    threads: int


def _files(pid: int) -> int:
    """Open descriptors that are not sockets. Sockets track the load generator's connections,
    more of them on a busy machine; a leak of those shows after the run (``after.fds``)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            count += not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def _sample_every(pid: int, interval_s: float, stop: threading.Event, into: list[Sample]) -> None:
    process = psutil.Process(pid)
    started = time.perf_counter()
    while not stop.is_set():
        with process.oneshot():
            into.append(
                Sample(time.perf_counter() - started, process.memory_info().rss,
                       _files(pid), process.num_threads())
            )  # fmt: skip
        stop.wait(interval_s)


def _slope_per_min(t_s: list[float], values: list[float]) -> float:
    return float(np.polyfit(np.asarray(t_s) / 60.0, np.asarray(values, dtype=float), 1)[0])


@pytest.mark.slow
def test_a_short_soak_answers_everything_and_nothing_creeps(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    ids = write_fleet(
        tmp_path / "store", models=MODELS, size_bytes=16_000, seed=7, tenants=MODELS // 4
    )
    server = start_process(
        tmp_path / "store", "--memory-budget", str(BUDGET_BYTES), "--log-level", "warning"
    )
    process = psutil.Process(server.pid)
    assert warm_up(server.url, ids[:20]) == 0
    # Concurrent traffic first, so every pool the server has has started its threads.
    warm = generate("zipf", ids, rate=1000, duration_s=5, seed=8)
    replay(warm, LoadSpec(server.url, concurrency=8, duration_s=2.0), server_pid=server.pid)
    idle = Sample(0.0, process.memory_info().rss, process.num_fds(), process.num_threads())

    samples: list[Sample] = []
    stop = threading.Event()
    sampler = threading.Thread(
        target=_sample_every, args=(server.pid, 0.5, stop, samples), daemon=True
    )
    trace = generate("zipf", ids, rate=RATE_PER_S, duration_s=DURATION_S, seed=7)
    sampler.start()
    try:
        run = replay(trace, LoadSpec(server.url, duration_s=DURATION_S, timeout_s=30, drain_s=30),
                     server_pid=server.pid)  # fmt: skip
    finally:
        stop.set()
        sampler.join(timeout=10)
    time.sleep(0.5)  # the load generator's connections close
    after = Sample(0.0, process.memory_info().rss, process.num_fds(), process.num_threads())

    statuses = Counter(o.status for o in run.outcomes)
    assert len(run.outcomes) == len(trace)
    lost = sum(n for status, n in statuses.items() if status <= 0)
    assert lost == 0, statuses  # every request sent was answered
    assert statuses[200] >= 0.95 * len(run.outcomes), statuses
    metrics = run.samples[-1].metrics
    assert metrics["evictions"] > 50  # the soak churned the cache the whole time
    assert metrics["loaded_models"] < MODELS

    # Nothing creeps: compare the last third of the run with the first (after warm-up), and
    # the server after the run with the server before it.
    third = len(samples) // 3
    assert third >= 5
    first, last = samples[:third], samples[-third:]
    fds_first, fds_last = max(s.fds for s in first), max(s.fds for s in last)  # files only
    assert fds_last <= fds_first + 4, (fds_first, fds_last)
    assert after.fds <= idle.fds + 2, (idle.fds, after.fds)
    threads = {s.threads for s in samples}
    assert max(threads) <= idle.threads + 4, (idle.threads, sorted(threads))
    assert after.threads <= idle.threads + 2
    rss_first = sum(s.rss_bytes for s in first) / third
    rss_last = sum(s.rss_bytes for s in last) / third
    assert rss_last <= rss_first + 32 * 2**20, (rss_first / 2**20, rss_last / 2**20)
    assert max(s.rss_bytes for s in samples) <= idle.rss_bytes + BUDGET_BYTES + 96 * 2**20
    settled = samples[third:]
    rss_slope_mib = _slope_per_min([s.t_s for s in settled],
                                   [s.rss_bytes / 2**20 for s in settled])  # fmt: skip
    assert rss_slope_mib < 60, rss_slope_mib  # a leak of a MiB a second would show here
