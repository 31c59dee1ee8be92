"""Cold-load and warm-throughput figures for tenantserve against bare ONNX Runtime, as Markdown.

Usage: ``python benchmarks/bench_core.py [--models 20 --size-mb 8 --warm-models 8 ...]``

(a) cold: for N distinct models, a bare ``onnxruntime.InferenceSession`` (1 intra-op, 1 inter-op
thread) plus one run, against the first call of each model through a ``tenantserve serve``
subprocess (HTTP, KServe OIP v2). (b) warm: a closed loop of concurrent async httpx clients over
M resident models (req/s, p50, p99), against bare ``session.run`` on a thread pool of the same
concurrency. Both sides run in the same invocation, on loopback, bounded in requests and time.
Client and server share this machine's cores, so warm figures are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from tenantserve.tools.bench.servers import served_tenantserve
from tenantserve.tools.fleet.synth import write_fleet

N_FEATURES = 16


@dataclass
class Latencies:
    """Per-request latencies (seconds) and the wall time they took together."""

    seconds: list[float]
    wall_s: float
    errors: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    @property
    def rate(self) -> float:
        return len(self.seconds) / self.wall_s if self.wall_s else float("nan")


def _payload(rng: random.Random) -> dict[str, Any]:
    data = [rng.uniform(-1, 1) for _ in range(N_FEATURES)]
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, N_FEATURES], "data": data}]
    }


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bare_warm(store: Path, ids: list[str], *, concurrency: int, requests: int) -> Latencies:
    sessions = [_session(store / i / "model.onnx") for i in ids]
    x = np.ones((1, N_FEATURES), dtype=np.float32)

    def one(k: int) -> float:
        started = time.perf_counter()
        sessions[k % len(sessions)].run(None, {"input": x})
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(len(sessions))))  # first runs allocate; leave them out
        started = time.perf_counter()
        seconds = list(pool.map(one, range(requests)))
    return Latencies(seconds, time.perf_counter() - started)


def cold_pairs(url: str, store: Path, ids: list[str]) -> tuple[list[float], ...]:
    """Per model, in turn: a bare session + one run here, the server's first call, its second.

    Interleaving puts both sides under the same machine noise; bare sessions stay alive, as in
    a server, so each new one faults in fresh pages as the server's do.
    """
    rng = random.Random(0)
    x = np.ones((1, N_FEATURES), dtype=np.float32)
    _session(store / ids[0] / "model.onnx")  # ORT's one-time set-up, as the server's warm-up
    held = []
    bare: list[float] = []
    cold: list[float] = []
    warm: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for model_id in ids:
            started = time.perf_counter()
            session = _session(store / model_id / "model.onnx")
            session.run(None, {"input": x})
            bare.append(time.perf_counter() - started)
            held.append(session)
            for sink in (cold, warm):
                started = time.perf_counter()
                response = client.post(f"/v2/models/{model_id}/infer", json=_payload(rng))
                sink.append(time.perf_counter() - started)
                response.raise_for_status()
    return bare, cold, warm


async def _closed_loop(
    url: str, ids: list[str], *, concurrency: int, requests: int, duration_s: float
) -> Latencies:
    seconds: list[float] = []
    errors = 0
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        deadline = time.perf_counter() + duration_s

        async def worker(seed: int) -> None:
            nonlocal errors, issued
            rng = random.Random(seed)
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                model_id = ids[rng.randrange(len(ids))]
                started = time.perf_counter()
                response = await client.post(f"/v2/models/{model_id}/infer", json=_payload(rng))
                if response.status_code == 200:
                    seconds.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return Latencies(seconds, time.perf_counter() - started, errors)


def server_warm(
    url: str, ids: list[str], *, concurrency: int, requests: int, duration_s: float
) -> Latencies:
    rng = random.Random(1)
    with httpx.Client(base_url=url, timeout=60) as client:
        for model_id in ids:  # make every model resident before timing
            client.post(f"/v2/models/{model_id}/infer", json=_payload(rng)).raise_for_status()
    return asyncio.run(
        _closed_loop(url, ids, concurrency=concurrency, requests=requests, duration_s=duration_s)
    )


_WRK_SCRIPT = """
local ids = {%s}
local body = '%s'
local i = 0
request = function()
  i = i + 1
  local path = "/v2/models/" .. ids[(i %% #ids) + 1] .. "/infer"
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
"""
_WRK_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def wrk_warm(url: str, ids: list[str], *, concurrency: int, duration_s: float) -> dict[str, float]:
    """The same warm loop driven by wrk (C, one thread), so the client is not the bottleneck."""
    body = json.dumps(_payload(random.Random(2)))
    script = _WRK_SCRIPT % (", ".join(f'"{m}"' for m in ids), body)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, int(duration_s))}s", "--latency",
         "-s", file.name, url],
        capture_output=True, text=True, check=True, timeout=duration_s + 30,
    ).stdout  # fmt: skip
    os.unlink(file.name)
    figures = {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        figures[f"p{pct}"] = float(match.group(1)) * _WRK_UNITS[match.group(2)]  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = float(errors.group(1)) if errors else 0.0
    figures["requests"] = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return figures


def _metric_sums(url: str) -> dict[str, float]:
    wanted = ("tenantserve_model_loading_seconds_sum", "tenantserve_model_loading_seconds_count")
    totals = dict.fromkeys(wanted, 0.0)
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20, help="distinct models for cold loads")
    parser.add_argument("--size-mb", type=float, default=8.0, help="weight bytes per model (MB)")
    parser.add_argument("--warm-models", type=int, default=8, help="models in the warm loop")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in the warm loop")
    parser.add_argument("--requests", type=int, default=4000, help="warm requests at most")
    parser.add_argument("--duration-s", type=float, default=15.0, help="warm loop time limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, help="write the fleet here (else a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tenantserve-bench-") as tmp:
        store = args.store or Path(tmp) / "store"
        size_bytes = int(args.size_mb * 1_000_000)
        ids = write_fleet(store, models=args.models, size_bytes=size_bytes, seed=args.seed)
        warm_ids = ids[: args.warm_models]
        budget = f"{max(256, int(args.models * args.size_mb * 4))}MiB"  # nothing is evicted

        log = Path(tmp) / "server.log"
        with served_tenantserve(store, budget=budget, log_path=log) as server:
            url = server.url
            bare_c, srv_c, srv_second = cold_pairs(url, store, ids)
            loads = _metric_sums(url)
            bare_w = bare_warm(
                store, warm_ids, concurrency=args.concurrency, requests=args.requests
            )
            srv_w = server_warm(
                url, warm_ids, concurrency=args.concurrency, requests=args.requests,
                duration_s=args.duration_s,
            )  # fmt: skip
            wrk = (
                wrk_warm(url, warm_ids, concurrency=args.concurrency, duration_s=args.duration_s)
                if shutil.which("wrk")
                else None
            )

    bare_cold_ms = statistics.median(bare_c)
    srv_cold_ms = statistics.median(srv_c)
    load_count = loads["tenantserve_model_loading_seconds_count"]
    load_mean = loads["tenantserve_model_loading_seconds_sum"] / load_count if load_count else 0.0
    print(f"# tenantserve core benchmark\n\n{args.models} synthetic models of {args.size_mb} MB "
          f"(input FP32 [1, {N_FEATURES}]), {os.cpu_count()} CPUs, ONNX Runtime {ort.__version__}, "
          f"memory budget {budget}.\n")  # fmt: skip
    print("## Cold: first call of each model\n")
    print("| path | median ms | p90 ms | max ms | vs bare |")
    print("|---|---:|---:|---:|---:|")
    pair_ratio = statistics.median(c / b for c, b in zip(srv_c, bare_c, strict=True))
    for name, values in (
        ("bare InferenceSession + run", bare_c),
        ("tenantserve first call (HTTP)", srv_c),
        ("tenantserve second call (HTTP)", srv_second),
    ):
        ordered = sorted(values)
        print(f"| {name} | {_ms(statistics.median(values))} | "
              f"{_ms(ordered[int(0.9 * (len(ordered) - 1))])} | {_ms(ordered[-1])} | "
              f"{statistics.median(values) / bare_cold_ms:.2f} |")  # fmt: skip
    print(f"\nServer-side load time (tenantserve_model_loading_seconds): mean {_ms(load_mean)} ms "
          f"over {int(load_count)} loads; cold overhead over bare: "
          f"{_ms(srv_cold_ms - bare_cold_ms)} ms median; median pairwise ratio "
          f"{pair_ratio:.2f}.\n")  # fmt: skip
    print(f"## Warm: closed loop, {args.concurrency} clients over {len(warm_ids)} models\n")
    print("| path | requests | errors | req/s | p50 ms | p99 ms | req/s ÷ bare |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, lat in (
        ("bare session.run (thread pool)", bare_w),
        ("tenantserve OIP (httpx)", srv_w),
    ):
        ratio = lat.rate / bare_w.rate
        print(f"| {name} | {len(lat.seconds)} | {lat.errors} | {lat.rate:.0f} | "
              f"{_ms(lat.pct(0.5))} | {_ms(lat.pct(0.99))} | {ratio:.3f} |")  # fmt: skip
    if wrk is None:
        print("\n(wrk not found: install it (apt-get install wrk) for a client that is not the "
              "bottleneck; httpx in Python on the same cores is.)")  # fmt: skip
    else:
        print(f"| tenantserve OIP (wrk, 1 thread) | {wrk['requests']:.0f} | {wrk['errors']:.0f} | "
              f"{wrk['rate']:.0f} | {_ms(wrk['p50'])} | {_ms(wrk['p99'])} | "
              f"{wrk['rate'] / bare_w.rate:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
