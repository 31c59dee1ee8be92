"""Warm per-request latency of fleet-built tenant classifiers (tfidf, minilm), as Markdown.

Usage: ``python benchmarks/bench_fleet.py [--tenants 3 --requests 400 --kinds tfidf,minilm]``

For each kind: builds ``--tenants`` Banking77 tenants with the fleet builder (the code behind
``tenantserve fleet build``) into a temporary store, starts ``tenantserve serve`` on it as a
subprocess, warms every tenant, then sends ``--requests`` sequential single-ticket OIP JSON
requests (real Banking77 test tickets of each tenant's own macros, round-robin over tenants,
asking for the ``macros`` and ``scores`` outputs) from one keep-alive client on loopback. Prints
the client-side median and p99 and the server-side means from ``/metrics``
(``tenantserve_request_seconds`` for OIP: the whole request inside the server;
``tenantserve_inference_seconds``: inside ``model.predict``, tokenisation and top-k included)
over the measured requests only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

from tenantserve.tools.bench.servers import served_tenantserve
from tenantserve.tools.fleet.build import build_fleet
from tenantserve.tools.fleet.datasets import resolve_datasets
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.sources import TenantPlan, plan_banking77

WARM_REQUESTS = 20
MIN_REQUESTS = 200
# Every tenant resident at once: a MiniLM encoder session holds about 93 MB.
BUDGET = "1GiB"
_SERVER_SERIES = {
    "request": ("tenantserve_request_seconds", {"protocol": "oip"}),
    "inference": ("tenantserve_inference_seconds", {}),
}


@dataclass(frozen=True)
class Result:
    """One kind's figures: seconds per request, client side and server side."""

    kind: str
    tenants: int
    artifact_mb: float
    build_s: float
    requests: int
    median_s: float
    p99_s: float
    server_request_mean_s: float
    inference_mean_s: float


@contextlib.contextmanager
def _serve(store: Path, work: Path) -> Iterator[str]:
    """``tenantserve serve`` on ``store`` as a child process; its URL once ready."""
    with served_tenantserve(
        store, budget=BUDGET, log_path=work / "server.log", cache_dir=work / "cache"
    ) as server:
        yield server.url


def _histogram(client: httpx.Client, name: str, labels: dict[str, str]) -> tuple[float, float]:
    """(sum, count) of histogram ``name`` over series whose labels include ``labels``."""
    total = count = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if not labels.items() <= sample.labels.items():
                continue
            if sample.name == f"{name}_sum":
                total += sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
    return total, count


def _misses(client: httpx.Client) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
        if sample.name == "tenantserve_model_cache_misses_total"
    )


def _body(ticket: str) -> dict[str, Any]:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": [ticket]}],
        "outputs": [{"name": "macros"}, {"name": "scores"}],
    }


def _post(client: httpx.Client, model_id: str, ticket: str) -> float:
    started = time.perf_counter()
    response = client.post(f"/v2/models/{model_id}/infer", json=_body(ticket))
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{model_id}: {response.status_code} {response.text[:300]}")
    return elapsed


def measure(kind: str, plans: list[TenantPlan], *, requests: int, seed: int) -> Result:
    """Build ``plans`` as ``kind``, serve them, warm them, time ``requests`` requests."""
    with tempfile.TemporaryDirectory(prefix=f"bench-fleet-{kind}-") as tmp:
        work = Path(tmp)
        store = work / "store"
        started = time.perf_counter()
        built = build_fleet(plans, kind=kind, publisher=open_publisher(str(store)), seed=seed)
        build_s = time.perf_counter() - started
        rng = random.Random(seed)
        tickets = {
            plan.model_id: [" ".join(row.text.split()) for row in plan.holdout] for plan in plans
        }
        for texts in tickets.values():
            rng.shuffle(texts)
        ids = [plan.model_id for plan in plans]
        with _serve(store, work) as url, httpx.Client(base_url=url, timeout=60) as client:
            for model_id in ids:
                for ticket in tickets[model_id][:WARM_REQUESTS]:
                    _post(client, model_id, ticket)
            before = {k: _histogram(client, *series) for k, series in _SERVER_SERIES.items()}
            misses = _misses(client)
            seconds = []
            for i in range(requests):
                model_id = ids[i % len(ids)]
                texts = tickets[model_id]
                seconds.append(_post(client, model_id, texts[(WARM_REQUESTS + i) % len(texts)]))
            after = {k: _histogram(client, *series) for k, series in _SERVER_SERIES.items()}
            # Warm means no request in the measured run had to load its model.
            if _misses(client) != misses:
                raise SystemExit(f"{kind}: a model was loaded while measuring; raise {BUDGET}")
        means = {
            k: (after[k][0] - before[k][0]) / max(after[k][1] - before[k][1], 1) for k in before
        }
        return Result(
            kind=kind,
            tenants=len(plans),
            artifact_mb=sum(r.artifact_bytes for r in built) / len(built) / 1e6,
            build_s=build_s,
            requests=requests,
            median_s=float(np.median(seconds)),
            p99_s=float(np.percentile(seconds, 99)),
            server_request_mean_s=means["request"],
            inference_mean_s=means["inference"],
        )


def markdown(results: list[Result], argv: list[str], load: tuple[float, float]) -> str:
    """The results as the Markdown table docs/fleet.md shows; ``load``: 1-min load before, after."""
    ms = 1000.0
    command = " ".join(["python", "benchmarks/bench_fleet.py", *argv])
    lines = [
        f"`{command}`",
        "",
        f"{os.cpu_count()} CPU cores ({platform.machine()}), Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}; client and server on the same machine, loopback; "
        f"load average {load[0]:.1f} before, {load[1]:.1f} after.",
        "",
        "| kind | tenants | artifact (MB) | build (s) | requests | client median (ms) "
        "| client p99 (ms) | server request mean (ms) | inference mean (ms) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r.kind} | {r.tenants} | {r.artifact_mb:.2f} | {r.build_s:.1f} | {r.requests} | "
        f"{r.median_s * ms:.2f} | {r.p99_s * ms:.2f} | {r.server_request_mean_s * ms:.2f} | "
        f"{r.inference_mean_s * ms:.2f} |"
        for r in results
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=3)
    parser.add_argument("--requests", type=int, default=400, help=f"at least {MIN_REQUESTS}")
    parser.add_argument("--kinds", default="tfidf,minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", type=Path, help="banking77/ folder (default: bundled)")
    args = parser.parse_args()
    if args.requests < MIN_REQUESTS:
        parser.error(f"--requests must be at least {MIN_REQUESTS} for a p99")
    load_before = os.getloadavg()[0]
    plans = plan_banking77(resolve_datasets(args.datasets), tenants=args.tenants, seed=args.seed)
    results = [
        measure(kind, plans, requests=args.requests, seed=args.seed)
        for kind in args.kinds.split(",")
    ]
    print(markdown(results, sys.argv[1:], (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
