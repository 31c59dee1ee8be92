"""Warm path against the raw floor, side by side: every model preloaded, wrk 2x16, A B A B.

    .venv/bin/python benchmarks/bench_warm.py [--models 200 --size-mb 10 --rounds 3 --seconds 20]
        [--compare-src /path/to/other/checkout/src]

Writes a synthetic fleet (numeric ONNX models), starts the raw floor (plain ASGI over
preloaded sessions, `tenantserve bench floor`) and `tenantserve serve` with every model
preloaded, both on uvicorn with uvloop and httptools, and drives each in turn with the same
wrk script over a Zipf (s=1.1) sequence of model ids. Prints each slice, then the medians:
req/s, p50, p99 and the server process's CPU per request (its utime+stime over the slice),
and tenantserve's ratios to the floor. With ``--compare-src``, a third server in each round:
``tenantserve serve`` from another source tree (a before-and-after of one change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from tenantserve.tools.bench.servers import Served, served_floor, served_tenantserve
from tenantserve.tools.bench.side_by_side import cpu_seconds, kept_fleet, zipf_sequence
from tenantserve.tools.bench.wrk import WrkResult, run_wrk

BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
).encode()


def _slice(served: Served, sequence: list[str], seconds: float) -> tuple[WrkResult, float]:
    before = cpu_seconds(served.pid)
    result = run_wrk(served.url, sequence, body=BODY, concurrency=16, duration_s=seconds, threads=2)
    used = cpu_seconds(served.pid) - before
    return result, used / max(1, result.requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--store", type=Path, help="fleet folder, kept for the next run")
    parser.add_argument("--extra", default="", help="more `tenantserve serve` flags")
    parser.add_argument("--compare-src", type=Path, help="another src/ to run a third server from")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    store = args.store or work / "store"
    ids = kept_fleet(store, models=args.models, size_mb=args.size_mb)
    sequence = zipf_sequence(ids, 1.1, 5000, seed=0)
    budget = f"{max(4, int(len(ids) * args.size_mb * 3 / 1000) + 2)}GB"
    names = ["floor", "tenantserve"] + (["before"] if args.compare_src is not None else [])
    rows: dict[str, list[tuple[WrkResult, float]]] = {name: [] for name in names}
    load = os.getloadavg()[0]
    print(f"{len(ids)} models of {args.size_mb:g} MB, wrk 2x16, {args.rounds} rounds of "
          f"{args.seconds:g} s each; load average {load:.2f}", flush=True)  # fmt: skip
    flags = ["--preload", "*/*", *args.extra.split()]
    with contextlib.ExitStack() as stack:
        servers = {
            "floor": stack.enter_context(
                served_floor(store, log_path=work / "floor.log", threads=os.cpu_count())
            ),
            "tenantserve": stack.enter_context(
                served_tenantserve(
                    store,
                    budget=budget,
                    log_path=work / "tenantserve.log",
                    cache_dir=work / "cache",
                    extra_args=flags,
                )
            ),
        }
        if args.compare_src is not None:
            servers["before"] = stack.enter_context(
                served_tenantserve(
                    store,
                    budget=budget,
                    log_path=work / "before.log",
                    cache_dir=work / "cache-before",
                    extra_args=flags,
                    src=args.compare_src,
                )
            )
        for served in servers.values():
            _slice(served, sequence, 3)  # warm: every model answers once first
        for round_ in range(args.rounds):
            for name, served in servers.items():
                result, cpu = _slice(served, sequence, args.seconds)
                rows[name].append((result, cpu))
                print(f"round {round_ + 1} {name:12} {result.rate:8.0f} req/s  "
                      f"p50 {result.p50_s * 1e3:6.2f} ms  p99 {result.p99_s * 1e3:6.2f} ms  "
                      f"cpu {cpu * 1e3:.3f} ms/req  errors {result.errors}",
                      flush=True)  # fmt: skip
    med = {
        name: (
            statistics.median(r.rate for r, _ in slices),
            statistics.median(r.p50_s for r, _ in slices),
            statistics.median(r.p99_s for r, _ in slices),
            statistics.median(c for _, c in slices),
        )
        for name, slices in rows.items()
    }
    print("\n| server | req/s | p50 ms | p99 ms | CPU ms/req |\n|---|---:|---:|---:|---:|")
    for name, (rate, p50, p99, cpu) in med.items():
        print(f"| {name} | {rate:.0f} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {cpu * 1e3:.3f} |")
    f, t = med["floor"], med["tenantserve"]
    load = os.getloadavg()[0]
    print(f"\nratios to the floor: req/s {t[0] / f[0]:.2f}x, p99 {t[2] / f[2]:.2f}x, "
          f"CPU per request {t[3] / f[3]:.2f}x; load average now {load:.2f}")  # fmt: skip
    if "before" in med:
        b = med["before"]
        print(f"before ({args.compare_src}) to the floor: req/s {b[0] / f[0]:.2f}x, p99 "
              f"{b[2] / f[2]:.2f}x, CPU per request {b[3] / f[3]:.2f}x; tenantserve to before: "
              f"req/s {t[0] / b[0]:.2f}x, CPU per request {t[3] / b[3]:.2f}x")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
