"""The quarter-budget run under several `tenantserve serve` flag sets, taken in turn.

Usage: ``python benchmarks/bench_quarter_flags.py --store STORE [--duration-s 20] [--rounds 2]
--flags "" --flags "--threads 3" ...``

``STORE`` is a fleet such as ``tenantserve bench suite`` builds (200 models of 10 MB). Each
flag set gets a fresh server with the suite's quarter budget (478 MiB) and its own disk tier,
one call to every model (least popular first), then a closed loop of 16 clients over the
suite's Zipf (s=1.1) trace for ``--duration-s``; the sets are taken in turn, ``--rounds``
times (A B A B). Printed per run: req/s, the hit ratio and hit and miss latencies (from the
answers' cache headers), the server's mean wait of a first call for its model and a load's
time in its slot (from /metrics), and its CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from tenantserve.tools.bench import loadgen, trace_kinds
from tenantserve.tools.bench.floor import local_model_ids
from tenantserve.tools.bench.harness import popularity_order
from tenantserve.tools.bench.sampler import read_metrics
from tenantserve.tools.bench.servers import served_tenantserve

QUARTER_BYTES = 501_000_000  # the suite's quarter of 200 models of 10 MB (478 MiB)


def _mean_ms(before: dict[str, float], after: dict[str, float], total: str, count: str) -> float:
    n = after.get(count, 0.0) - before.get(count, 0.0)
    return (after.get(total, 0.0) - before.get(total, 0.0)) / n * 1e3 if n else float("nan")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else 0.0


def run_once(store: Path, flags: str, duration_s: float) -> str:
    ids = local_model_ids(store)
    trace = trace_kinds.zipf(ids, rate=4000, duration_s=60, seed=0, s=1.1)
    with tempfile.TemporaryDirectory(prefix="quarter-flags-") as tmp:
        served = served_tenantserve(
            store, budget=str(QUARTER_BYTES), log_path=Path(tmp) / "server.log",
            cache_dir=Path(tmp) / "cache", extra_args=tuple(flags.split()),
        )  # fmt: skip
        with served as server:
            loadgen.warm_up(server.url, popularity_order(trace))
            before = read_metrics(server.url)
            process = psutil.Process(server.pid)
            cpu_before, started = process.cpu_times(), time.monotonic()
            spec = loadgen.LoadSpec(server.url, concurrency=16, duration_s=duration_s)
            result = loadgen.replay(trace, spec)
            cpu_after, wall_s = process.cpu_times(), time.monotonic() - started
            after = read_metrics(server.url)
    ok = [o for o in result.outcomes if o.status == 200]
    hits = [o.latency_s for o in ok if o.cache == "hit"]
    misses = [o.latency_s for o in ok if o.cache == "miss"]
    cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / wall_s
    return (
        f"| `{flags or 'defaults'}` | {len(ok) / result.wall_s:.1f} | "
        f"{len(result.outcomes) - len(ok)} | {len(hits) / max(1, len(ok)):.3f} | "
        f"{_pct(hits, 0.5):.1f} / {_pct(hits, 0.99):.1f} | "
        f"{_pct(misses, 0.5):.1f} / {_pct(misses, 0.99):.1f} | "
        f"{_pct([o.latency_s for o in ok], 0.99):.1f} | "
        f"{_mean_ms(before, after, 'loading_wait_s', 'loading_waits'):.1f} | "
        f"{_mean_ms(before, after, 'load_slot_s', 'load_slots'):.1f} | {cpu:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flags", action="append", default=None, help="a flag set (repeat)")
    args = parser.parse_args()
    sets = args.flags or [""]
    print(
        "| flags | req/s | errors | hit ratio | hit p50 / p99 ms | miss p50 / p99 ms | p99 ms | "
        "first call's wait ms | load's slot ms | server cores |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for flags in sets:
            print(run_once(args.store, flags, args.duration_s), flush=True)


if __name__ == "__main__":
    main()
