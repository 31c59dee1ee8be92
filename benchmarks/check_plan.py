"""Hold `tenantserve plan`'s prediction against a measured run, as Markdown.

Usage: ``python benchmarks/check_plan.py --profile P --requests CSV --instance 1GiB:2
--overhead 257MiB [--policy lru] [--clients 16]``

``CSV`` is a request log written by ``tenantserve bench suite`` (``requests-<run>.csv``: send
time, model id, latency, and the server's own hit/miss header). Its send times are the trace;
the planner replays it through the real cache code on one instance of the given size and the
table sets its hit ratio, p50 and p99 beside what the server measured. ``P`` is a profile from
``tenantserve plan --store STORE --save-profile P``. With ``--clients N`` the planner replays
the log's order of models as a closed loop of N clients, as the suite measured it, rather than
at the log's send times.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from tenantserve.cache.policies import NAMES
from tenantserve.tools.bench.plan import FleetProfile, simulate
from tenantserve.tools.bench.plan_cli import parse_instance
from tenantserve.units import parse_size


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--instance", default="1GiB:2")
    parser.add_argument("--overhead", default="512MiB")
    parser.add_argument("--policy", default="adaptive-cost", choices=NAMES)
    parser.add_argument(
        "--min-residency-s", type=float, default=1.0, help="the run's --min-residency-s (cost)"
    )
    parser.add_argument(
        "--request-cpu-ms", type=float, default=None,
        help="a request's CPU beyond its model (default: the planner's, measured on a quiet box)",
    )  # fmt: skip
    parser.add_argument(
        "--clients", type=int, default=None,
        help="replay as a closed loop of this many clients (the suite's --concurrency)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    extra = {} if args.request_cpu_ms is None else {"request_cpu_s": args.request_cpu_ms / 1e3}

    with args.requests.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "200"]
    trace = [(float(r["t_s"]), r["model_id"]) for r in rows]
    latencies = sorted(float(r["latency_s"]) for r in rows)
    measured_hit = sum(r["cache"] == "hit" for r in rows) / len(rows)
    predicted = simulate(
        trace,
        FleetProfile.load(args.profile),
        parse_instance(args.instance),
        overhead_bytes=parse_size(args.overhead),
        policy=args.policy,
        min_residency_s=args.min_residency_s,
        clients=args.clients,
        **extra,
    )

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    print(
        f"{len(trace)} requests from {args.requests.name}, {args.instance}, {args.policy}, "
        f"min residency {args.min_residency_s:g} s, "
        + (
            "open loop at the log's send times"
            if args.clients is None
            else f"closed loop of {args.clients} clients"
        )
        + "\n"
    )
    print("| | hit ratio | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    print(f"| measured | {measured_hit:.3f} | {pct(0.5):.1f} | {pct(0.99):.1f} |")
    print(
        f"| `tenantserve plan` predicted | {predicted.hit_ratio:.3f} | "
        f"{predicted.p50_s * 1000:.1f} | {predicted.p99_s * 1000:.1f} |"
    )
    print(f"\nhit ratio off by {abs(predicted.hit_ratio - measured_hit):.3f}")


if __name__ == "__main__":
    main()
