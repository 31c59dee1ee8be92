"""Listing, status and metrics at fleet scale, and what one resident MiniLM head costs.

Serves STORE (a ``fleet build --kind minilm`` store, so every tenant shares the encoder) after
padding it with ``--pad-to`` models in all: hard-linked copies of one tiny synthetic model under
``pad-NNNNN/model`` (listing and status cost per model id, not per byte). Then

1. calls ``--resident`` MiniLM tenants once, so they are resident, and reports the memory
   ledger and process RSS over the server's baseline, per resident head, and the process's
   whole RSS growth since it started beside the budget;
2. calls ``--warm-calls`` resident tenants at random, one request at a time (low load), and
   reports the warm latency's median and p99;
3. times ``POST /v2/repository/index``, ``GET /v1/status``, the status page (``GET /ui/``)
   and ``GET /metrics`` (median and worst of ``--repeat`` calls, body size; ``/metrics``'s
   series count before and after the calls, to show it stays bounded).

Prints Markdown. Loopback only; bounded in requests and time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import httpx
import psutil

from tenantserve.tools.bench.servers import served_tenantserve
from tenantserve.tools.fleet.synth import write_synthetic_model

TICKET = "I lost my card and need to block it right away"
_PAD = "pad-{:05d}/model"


def minilm_tenants(store: Path) -> list[str]:
    """Model ids of the store's MiniLM tenants (``<tenant>/macros`` with a shared base)."""
    return sorted(
        f"{p.parent.parent.name}/{p.parent.name}"
        for p in store.glob("*/macros/model.json")
        if (p.parent / "encoder.onnx").exists()
    )


def pad(store: Path, total: int) -> int:
    """Hard-link copies of one 2 KB model until ``store`` holds ``total`` model folders."""
    have = len(list(store.glob("*/*/model.json")))
    template = store / ".pad-template"
    if not template.exists():
        write_synthetic_model(template, size_bytes=2_000, seed=0)
    added = 0
    for i in range(total):
        if have + added >= total:
            break
        dest = store / _PAD.format(i)
        if dest.exists():
            continue
        dest.mkdir(parents=True)
        for f in template.iterdir():
            os.link(f, dest / f.name)
        added += 1
    return have + added


def timed(client: httpx.Client, method: str, path: str, repeat: int) -> tuple[float, float, int]:
    """(median ms, worst ms, body bytes) of ``repeat`` calls."""
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.request(method, path, json={} if method == "POST" else None)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return statistics.median(times), max(times), size


def series(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--pad-to", type=int, default=10_000)
    parser.add_argument("--resident", type=int, default=200)
    parser.add_argument("--budget", default="2GiB")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warm-calls", type=int, default=500)
    args = parser.parse_args()

    tenants = minilm_tenants(args.store)[: args.resident]
    models = pad(args.store, args.pad_to)
    log = args.store.parent / "bench_fleet_index.log"
    with served_tenantserve(args.store, budget=args.budget, log_path=log) as served:
        server = psutil.Process(served.pid)
        client = httpx.Client(base_url=served.url, timeout=300)
        series_before = series(client)
        started_rss = server.memory_info().rss
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1],
                            "data": [TICKET]}]}  # fmt: skip
        # The first tenant brings the shared encoder; the rest cost their head only.
        client.post(f"/v2/models/{tenants[0]}/infer", json=body).raise_for_status()
        baseline = server.memory_info().rss
        used_before = client.get("/v1/status").json()["memory"]["used_bytes"]
        started = time.perf_counter()
        for model in tenants[1:]:
            client.post(f"/v2/models/{model}/infer", json=body).raise_for_status()
        load_s = time.perf_counter() - started
        rss = server.memory_info().rss
        status = client.get("/v1/status").json()
        heads = max(1, len(tenants) - 1)
        ledger = (status["memory"]["used_bytes"] - used_before) / heads
        print(f"# Fleet scale: {models} models in the store, {len(tenants)} MiniLM resident\n")
        print("| figure | value |\n|---|---:|")
        print(f"| models in the store | {models} |")
        print(f"| MiniLM tenants made resident | {len(tenants)} |")
        print(f"| resident now (status) | {status['models_total']} |")
        print(f"| head load + first call, mean | {load_s / heads * 1000:.1f} ms |")
        print(f"| ledger bytes per head | {ledger / 1024:.0f} KiB |")
        print(f"| RSS growth per head | {(rss - baseline) / heads / 1024:.0f} KiB |")
        grown = (rss - started_rss) / 2**20
        print(f"| RSS growth since start (budget {args.budget}) | {grown:.0f} MiB |")
        warm = []
        pick = random.Random(0)
        for _ in range(args.warm_calls):
            call = pick.choice(tenants)
            began = time.perf_counter()
            client.post(f"/v2/models/{call}/infer", json=body).raise_for_status()
            warm.append((time.perf_counter() - began) * 1000)
        warm.sort()
        p99 = warm[min(len(warm) - 1, int(len(warm) * 0.99))]
        p50 = statistics.median(warm)
        print(f"| warm call, one at a time: p50 / p99 | {p50:.1f} / {p99:.1f} ms |")
        print(f"| metrics series before / after | {series_before} / {series(client)} |")
        print("\n| endpoint | median ms | worst ms | body |\n|---|---:|---:|---:|")
        for method, path in (
            ("POST", "/v2/repository/index"),
            ("GET", "/v1/status"),
            ("GET", "/ui/"),
            ("GET", "/metrics"),
        ):
            median, worst, size = timed(client, method, path, args.repeat)
            print(f"| {method} {path} | {median:.1f} | {worst:.1f} | {size / 1024:.0f} KiB |")


if __name__ == "__main__":
    main()
