"""Ray Serve scale-out figures, as Markdown: 1 vs 2 replicas next to one process, spill, node kill.

Usage: ``python benchmarks/bench_ray.py [--models 24 --size-mb 2 --budget-mib 40 --requests 1200]``

(a) One Zipf trace over a synthetic fleet, replayed by a closed loop of concurrent clients
against ``tenantserve serve`` (one process, 2 prediction threads), then against Ray Serve with 1
replica (2 CPUs) and with 2 replicas (1 CPU each) on a local 2-CPU cluster. Each process has
the same memory budget, smaller than the fleet: the hit ratio (``X-Tenantserve-Cache``)
shows whether affinity routing turns two budgets into one larger cache. (b) A hot model under
16 concurrent clients, with ``max_ongoing_requests`` of 4: how many replicas serve it.
(c) Each replica's ledger against its budget (its ``/metrics``, reached through the proxy).
(d) Two simulated nodes (``ray.cluster_utils.Cluster``), one replica each; the worker node
is killed under load: where its models go, and which requests fail.
Everything runs on this machine; client, proxy and replicas share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from _ray_common import Run, drive, free_port, replica_metrics, wait_ready, zipf_trace
from tenantserve.config import Settings
from tenantserve.tools.fleet.synth import write_fleet


def replica_ledgers(url: str, replicas: int, tries: int = 60) -> dict[str, tuple[float, ...]]:
    """Each replica's (memory used, budget) in bytes, from its own ``/metrics``."""
    names = ("tenantserve_memory_used_bytes", "tenantserve_memory_budget_bytes")
    return replica_metrics(url, names, replicas, tries)


def run_process(store: Path, trace: Sequence[str], args: argparse.Namespace, tmp: Path) -> Run:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tenantserve", "serve", "--store", str(store), "--port",
           str(port), "--memory-budget", f"{args.budget_mib}MiB", "--threads", "2",
           "--cache-dir", str(tmp / "cache-process"), "--log-level", "warning"]  # fmt: skip
    log = (tmp / "process.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url)
        calls, wall = asyncio.run(drive(url, trace, args.concurrency))
        run = Run("one process (`tenantserve serve`, 2 threads)", calls, wall)
        used, budget = replica_ledgers(url, 1)["process"]
        run.notes.append(f"ledger {used / 2**20:.1f} of {budget / 2**20:.0f} MiB")
        return run
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def run_ray(
    store: Path, trace: Sequence[str], args: argparse.Namespace, tmp: Path, replicas: int
) -> tuple[Run, Run | None]:
    from tenantserve.integrations.ray_serve import RayOptions, deploy, shutdown

    settings = Settings(
        store=str(store),
        memory_budget=args.budget_mib * 2**20,
        threads=2 // replicas,
        cache_dir=tmp / f"cache-ray-{replicas}",
        log_level="warning",
    )
    options = RayOptions(
        num_cpus=2,
        replicas=replicas,
        replica_cpus=2 / replicas,
        http_port=free_port(),
        max_ongoing_requests=4,
        routing_stats_period_s=1.0,
    )
    started = time.perf_counter()
    url = deploy(settings, options)
    ready_s = time.perf_counter() - started
    try:
        calls, wall = asyncio.run(drive(url, trace, args.concurrency))
        run = Run(f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''}", calls, wall)
        run.notes.append(f"cluster + deploy {ready_s:.0f} s")
        for name, (used, budget) in sorted(replica_ledgers(url, replicas).items()):
            run.notes.append(f"{name}: ledger {used / 2**20:.1f} of {budget / 2**20:.0f} MiB")
        hot = None
        if replicas > 1:
            hottest = Counter(trace).most_common(1)[0][0]
            hot_calls, hot_wall = asyncio.run(drive(url, [hottest] * args.hot_requests, 16))
            hot = Run(f"hot model `{hottest}`, 16 clients", hot_calls, hot_wall)
        return run, hot
    finally:
        shutdown(options)


def run_two_nodes(store: Path, ids: Sequence[str], args: argparse.Namespace, tmp: Path) -> Run:
    """Two one-CPU nodes, a replica on each; the worker node dies at ``kill_at_s``."""
    import ray
    from ray.cluster_utils import Cluster

    from tenantserve.integrations.ray_serve import RayOptions, deploy, shutdown

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        settings = Settings(
            store=str(store),
            memory_budget=args.budget_mib * 2**20,
            threads=1,
            cache_dir=tmp / "cache-nodes",
            log_level="warning",
            # Simulated nodes of this machine: nothing beyond loopback reaches the proxy.
            insecure_no_auth=True,
        )
        options = RayOptions(
            address=cluster.address,
            replicas=2,
            replica_cpus=1,
            http_port=free_port(),
            proxy_location="HeadOnly",  # both nodes are this machine: one port, one proxy
            routing_stats_period_s=1.0,
        )
        url = deploy(settings, options)
        models = list(ids[: args.kill_models])
        warm, _ = asyncio.run(drive(url, models * 3, 2))
        before = {c.model_id: c.replica for c in warm if c.status == 200}
        trace = [models[i % len(models)] for i in range(args.kill_requests)]
        killed: list[float] = []

        def kill() -> None:
            time.sleep(args.kill_at_s)
            killed.append(time.perf_counter())
            # Returns at once: the node's processes (raylet, its replica) die as it returns.
            cluster.remove_node(worker, allow_graceful=False)

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()
        calls, wall = asyncio.run(drive(url, trace, 2))
        killer.join()
        run = Run("2 nodes, worker node killed under load", calls, wall)
        kill_s = killed[0] if killed else float("inf")
        failed = [c for c in calls if c.status != 200]
        offsets = [c.started_s - kill_s for c in failed]
        late = [c for c in calls if c.started_s > kill_s + args.settle_s]
        survivors = Counter(c.replica for c in late if c.status == 200)
        moved = {m for m, r in before.items() if r not in survivors}
        served_after = {c.model_id for c in late if c.status == 200}
        run.notes += [
            f"placement before the kill: {dict(Counter(before.values()))}",
            f"failed: {len(failed)}"
            + (
                f", sent {min(offsets):+.2f} to {max(offsets):+.2f} s from the kill "
                f"({dict(Counter(c.status for c in failed))})"
                if failed
                else ""
            ),
            f"sent more than {args.settle_s:g} s after the kill: {len(late)}, "
            f"{sum(c.status != 200 for c in late)} failed, served by {dict(survivors)}",
            f"models of the dead replica now served by the survivor: "
            f"{len(moved & served_after)} of {len(moved)}",
        ]
        return run
    finally:
        with contextlib.suppress(Exception):
            shutdown(RayOptions(), keep_app=False)  # a local-style shutdown: Serve, then Ray
        cluster.shutdown()


def table(runs: Sequence[Run]) -> str:
    lines = [
        "| configuration | requests ok | errors | hit ratio | req/s | p50 ms | p99 ms | replicas "
        "that served |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        spread = Counter(c.replica for c in run.ok)
        lines.append(
            f"| {run.name} | {len(run.ok)} | {len(run.calls) - len(run.ok)} | "
            f"{run.hit_ratio:.1%} | {run.rate:.0f} | {run.pct(0.5) * 1000:.1f} | "
            f"{run.pct(0.99) * 1000:.1f} | {len(spread) if '-' not in spread else '-'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--size-mb", type=float, default=2.0)
    parser.add_argument("--budget-mib", type=int, default=40)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--zipf", type=float, default=0.9)
    parser.add_argument("--hot-requests", type=int, default=400)
    parser.add_argument("--kill-models", type=int, default=8)
    parser.add_argument("--kill-requests", type=int, default=1500)
    parser.add_argument("--kill-at-s", type=float, default=4.0)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--skip-nodes", action="store_true", help="skip the 2-node kill")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        store = tmp / "store"
        ids = write_fleet(store, models=args.models, size_bytes=int(args.size_mb * 1e6), seed=7)
        trace = zipf_trace(ids, args.requests, args.zipf, seed=11)
        steps: list[tuple[str, Callable[[], None]]] = []
        runs: list[Run] = []
        extra: list[Run] = []

        def ray_step(n: int) -> None:
            run, hot = run_ray(store, trace, args, tmp, n)
            runs.append(run)
            if hot is not None:
                extra.append(hot)

        steps.append(("process", lambda: runs.append(run_process(store, trace, args, tmp))))
        steps.append(("ray-1", lambda: ray_step(1)))
        steps.append(("ray-2", lambda: ray_step(2)))
        if not args.skip_nodes:
            steps.append(("nodes", lambda: extra.append(run_two_nodes(store, ids, args, tmp))))
        for name, step in steps:
            began = time.perf_counter()
            step()
            print(f"[{name}: {time.perf_counter() - began:.0f} s]", file=sys.stderr, flush=True)

        distinct = len(set(trace))
        print("## Ray Serve: 1 vs 2 replicas, hot-model spill, node kill (issue 6)\n")
        print(
            f"Fleet: {args.models} synthetic models of {args.size_mb:g} MB; budget "
            f"{args.budget_mib} MiB per process; trace: {args.requests} requests, Zipf "
            f"s={args.zipf} ({distinct} distinct models), {args.concurrency} clients, closed "
            f"loop. Machine: {os.cpu_count()} cores, shared by client, proxy and replicas.\n"
        )
        print(table(runs))
        print()
        for run in runs:
            print(f"- {run.name}: " + "; ".join(run.notes))
        if extra:
            print()
            print(table(extra))
            print()
            for run in extra:
                if run.notes:
                    print(f"- {run.name}: " + "; ".join(run.notes))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
