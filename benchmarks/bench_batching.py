"""Dynamic batching: MiniLM tenants on one shared encoder, closed-loop clients, batch on vs off.

Builds (once, kept in ``--work``) N MiniLM tenants from Banking77 with the fleet code, each
declaring the encoder as its shared ``base``. Then serves them with ``tenantserve serve`` in
alternating legs, A B A B: ``--max-batch-size`` ``--batch`` (default 8) against 1. In each leg
every tenant is called once (all resident), then ``--clients`` closed-loop clients send real
Banking77 tickets to tenants drawn at random (``--one-tenant``: all to the first) for
``--seconds``. Prints per leg req/s, p50/p99 and the mean batch size (from
``tenantserve_batch_size``), then the throughput ratio, and checks that each (tenant, ticket)
answered in both modes got the same scores.

Loopback only; the clients share the machine's cores with the server (figures are relative).
    python benchmarks/bench_batching.py --tenants 8 --seconds 10
    python benchmarks/bench_batching.py --store STORE   # a fleet built by `fleet build`
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from tenantserve.tools.bench.http import Connection, build_request
from tenantserve.tools.bench.servers import served_tenantserve
from tenantserve.tools.bench.side_by_side import cpu_seconds
from tenantserve.tools.fleet.build import build_fleet
from tenantserve.tools.fleet.datasets import resolve_datasets
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.sources import TenantPlan, find_banking77, plan_banking77
from tenantserve.tools.fleet.text import load_banking77

TRAIN_PER_MACRO = 10  # a useful head in a fraction of the full build's time
COMPLETE = ".complete"


def _small(plan: TenantPlan) -> TenantPlan:
    taken: dict[str, int] = {}
    train = []
    for row in plan.train:
        if taken.get(row.intent, 0) < TRAIN_PER_MACRO:
            taken[row.intent] = taken.get(row.intent, 0) + 1
            train.append(row)
    return dataclasses.replace(plan, train=tuple(train), holdout=plan.holdout[:20])


def kept_fleet(store: Path, tenants: int) -> tuple[list[str], list[str]]:
    """Tenant ids of a MiniLM fleet in ``store`` (built once), and tickets to send them."""
    plans = plan_banking77(resolve_datasets(), tenants=tenants, seed=0)
    if not (store / COMPLETE).exists():
        print(f"building {tenants} MiniLM tenants in {store} (once) ...", flush=True)
        started = time.perf_counter()
        build_fleet([_small(p) for p in plans], kind="minilm",
                    publisher=open_publisher(str(store)), seed=0)  # fmt: skip
        (store / COMPLETE).touch()
        print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    tickets = sorted({" ".join(r.text.split()) for p in plans for r in p.holdout})
    return [p.model_id for p in plans], tickets


def _body(ticket: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [ticket]}]}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _leg(url: str, pid: int, ids: list[str], tickets: list[str],
               args: argparse.Namespace, seed: int) -> dict[str, Any]:  # fmt: skip
    host, port = url.removeprefix("http://").split(":")
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        for model_id in ids:  # every tenant resident before the clock starts
            response = await client.post(f"/v2/models/{model_id}/infer", json=_body(tickets[0]))
            response.raise_for_status()
        before = (await client.get("/metrics")).text
        latencies: list[float] = []
        errors = 0
        stop_at = time.perf_counter() + args.seconds
        raw: dict[tuple[str, str], bytes] = {}

        async def closed_loop(rng: random.Random) -> None:
            # The lean client (tools/bench/http.py): httpx took more CPU than the server's loop.
            nonlocal errors
            conn = await Connection.open(host, int(port))
            while time.perf_counter() < stop_at:
                key = (ids[0] if args.one_tenant else rng.choice(ids), rng.choice(tickets))
                if key not in raw:
                    body = json.dumps(_body(key[1])).encode()
                    path = f"/v2/models/{key[0]}/infer"
                    raw[key] = build_request(f"{host}:{port}", path, body, "application/json")
                started = time.perf_counter()
                reply = await conn.request(raw[key], timeout_s=60)
                latencies.append(time.perf_counter() - started)
                errors += reply.status != 200
            conn.abort()

        started, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(closed_loop(random.Random(seed * 1000 + i))
                               for i in range(args.clients)))  # fmt: skip
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
        after = (await client.get("/metrics")).text
        # The same sample in every leg, all at once (so batched where batching is on).
        sample = [(ids[i % len(ids)], tickets[i]) for i in range(min(64, len(tickets)))]
        replies = await asyncio.gather(*(_answer(client, m, t) for m, t in sample))
    answers = dict(zip(sample, replies, strict=True))
    runs = _metric(after, "tenantserve_batch_size_count") - _metric(
        before, "tenantserve_batch_size_count"
    )
    rows = _metric(after, "tenantserve_batch_size_sum") - _metric(
        before, "tenantserve_batch_size_sum"
    )
    latencies.sort()
    return {
        "rps": (len(latencies) - errors) / elapsed,  # answered, not refused
        "p50": 1000 * latencies[len(latencies) // 2],
        "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "batch": rows / runs if runs else 0.0,
        "cpu_ms": 1000 * cpu / max(1, len(latencies) - errors),
        "errors": errors,
        "answers": answers,
    }


async def _answer(client: httpx.AsyncClient, model_id: str, ticket: str) -> list[float]:
    """The scores for ``ticket``, asked again while the server sheds load (503)."""
    for _ in range(20):
        response = await client.post(f"/v2/models/{model_id}/infer", json=_body(ticket))
        if response.status_code != 503:
            break
        await asyncio.sleep(0.1)
    response.raise_for_status()
    scores: list[float] = next(
        o["data"] for o in response.json()["outputs"] if o["name"] == "scores"
    )
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=8, help="MiniLM tenants, all resident")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per leg")
    parser.add_argument("--batch", type=int, default=8, help="--max-batch-size of the A legs")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds")
    parser.add_argument("--one-tenant", action="store_true", help="every request to one tenant")
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tenantserve-bench-batching"))
    parser.add_argument("--store", type=Path, help="a MiniLM fleet already built (all of it)")
    args = parser.parse_args()
    if args.store is not None:
        store = args.store
        ids = sorted(str(p.parent.relative_to(store)) for p in store.glob("*/*/model.json"))
        rows = load_banking77(find_banking77(resolve_datasets()) / "test.csv")
        tickets = sorted({" ".join(row.text.split()) for row in rows})
    else:
        store = args.work / f"store-{args.tenants}"
        ids, tickets = kept_fleet(store, args.tenants)
    mode = "one tenant" if args.one_tenant else f"{len(ids)} tenants at random"
    print(f"\n# Dynamic batching: {mode}, {args.clients} closed-loop clients, "
          f"{args.seconds:g} s a leg\n")  # fmt: skip
    print("| leg | --max-batch-size | req/s | p50 ms | p99 ms | mean batch | server CPU ms/req "
          "| errors |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    results: dict[int, list[dict[str, Any]]] = {args.batch: [], 1: []}
    for leg in range(2 * args.rounds):
        size = args.batch if leg % 2 == 0 else 1
        with served_tenantserve(
            store, budget=args.budget, log_path=args.work / f"leg-{leg}.log",
            cache_dir=args.work / "cache", extra_args=["--max-batch-size", str(size)],
        ) as served:  # fmt: skip
            row = asyncio.run(_leg(served.url, served.pid, ids, tickets, args, seed=leg))
        results[size].append(row)
        cells = [f"{'AB'[leg % 2]}{leg // 2 + 1}", str(size), f"{row['rps']:.1f}",
                 f"{row['p50']:.1f}", f"{row['p99']:.1f}", f"{row['batch']:.2f}",
                 f"{row['cpu_ms']:.2f}", str(row["errors"])]  # fmt: skip
        print("| " + " | ".join(cells) + " |", flush=True)
    on = statistics.mean(r["rps"] for r in results[args.batch])
    off = statistics.mean(r["rps"] for r in results[1])
    print(f"\nthroughput ratio (batch {args.batch} / batch 1): **{on / off:.2f}x** "
          f"({on:.1f} vs {off:.1f} req/s)")  # fmt: skip
    cpu_on = statistics.mean(r["cpu_ms"] for r in results[args.batch])
    cpu_off = statistics.mean(r["cpu_ms"] for r in results[1])
    print(f"server CPU per answered request: {cpu_on:.2f} vs {cpu_off:.2f} ms "
          f"(**{cpu_off / cpu_on:.2f}x** less with batching; the box's other load does not "
          "change it as it changes req/s)")  # fmt: skip
    worst, common = 0.0, 0
    batched = {k: v for r in results[args.batch] for k, v in r["answers"].items()}
    for r in results[1]:
        for key, scores in r["answers"].items():
            if key in batched:
                common += 1
                worst = max(
                    worst, max(abs(a - b) for a, b in zip(scores, batched[key], strict=True))
                )
    print(f"same (tenant, ticket) answered in both modes: {common}; "
          f"largest score difference: {worst:.1e}")  # fmt: skip
    if worst > 1e-5:
        raise SystemExit("batched answers differ from batch 1 by more than 1e-5")


if __name__ == "__main__":
    main()
