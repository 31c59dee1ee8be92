"""The warm path over gRPC against HTTP, side by side: one server, the same models, A B A B.

    .venv/bin/python benchmarks/bench_grpc.py [--models 50 --size-mb 2 --clients 16
                                               --procs 2 --rounds 3 --seconds 10]

Writes a synthetic fleet (numeric ONNX models), starts one `tenantserve serve` with every
model preloaded and `--grpc-port`, and drives it in turn over each protocol with the same
closed loop: ``--clients`` concurrent clients across ``--procs`` load processes, each sending
its next request as soon as the last is answered, over a Zipf (s=1.1) sequence of model ids.
The request is the same [1, 16] FP32 tensor: OIP JSON over HTTP/1.1 (aiohttp, keep-alive, as
curl and most REST clients send it) and raw contents over gRPC (grpc.aio, one channel a
process, as tritonclient.grpc sends it). Prints each slice, then the medians: req/s, p50,
p99 and the server process's CPU per request (its utime+stime over the slice), the figure
least bent by the load processes sharing the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from tenantserve.tools.bench.servers import Served, free_port, served_tenantserve
from tenantserve.tools.bench.side_by_side import cpu_seconds, kept_fleet, zipf_sequence

ROW = [0.5] * 16
JSON_BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": ROW}]}
).encode()
PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class Slice:
    """One protocol's run: requests answered, errors, seconds, latencies (s)."""

    requests: int
    errors: int
    seconds: float
    latencies: np.ndarray[Any, Any]
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) if self.latencies.size else float("nan")


def drive(protocol: str, target: str, ids: list[str], clients: int, seconds: float) -> Any:
    """One load process: ``clients`` closed loops for ``seconds``; (answers, errors, latencies)."""
    return asyncio.run(_drive(protocol, target, ids, clients, seconds))


async def _drive(
    protocol: str, target: str, ids: list[str], clients: int, seconds: float
) -> tuple[int, int, list[float]]:
    send, close = await (_http_sender(target) if protocol == "http" else _grpc_sender(target))
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await send(ids[i % len(ids)])
                latencies.append(time.perf_counter() - started)
            except Exception:
                errors += 1
            i += clients

    try:
        await asyncio.gather(*(client(k) for k in range(clients)))
    finally:
        await close()
    return len(latencies), errors, latencies


async def _http_sender(base: str) -> Any:
    import aiohttp

    session = aiohttp.ClientSession(
        base, connector=aiohttp.TCPConnector(limit=0), headers={"Content-Type": "application/json"}
    )

    async def send(model_id: str) -> None:
        async with session.post(f"/v2/models/{model_id}/infer", data=JSON_BODY) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(response.status)

    return send, session.close


async def _grpc_sender(address: str) -> Any:
    import grpc

    from tenantserve.protocols.grpc._generated import grpc_service_pb2 as pb
    from tenantserve.protocols.grpc._generated.grpc_service_pb2_grpc import (
        GRPCInferenceServiceStub,
    )

    channel = grpc.aio.insecure_channel(address)
    stub = GRPCInferenceServiceStub(channel)
    raw = np.array(ROW, dtype="<f4").tobytes()

    async def send(model_id: str) -> None:
        request = pb.ModelInferRequest(model_name=model_id, raw_input_contents=[raw])
        request.inputs.add(name="input", datatype="FP32", shape=[1, 16])
        await stub.ModelInfer(request)

    return send, channel.close


def _slice(
    pool: ProcessPoolExecutor, served: Served, protocol: str, target: str,
    sequences: list[list[str]], clients: int, seconds: float,
) -> Slice:  # fmt: skip
    per_process = [clients // len(sequences) + (k < clients % len(sequences))
                   for k in range(len(sequences))]  # fmt: skip
    before = cpu_seconds(served.pid)
    futures = [
        pool.submit(drive, protocol, target, ids, n, seconds)
        for ids, n in zip(sequences, per_process, strict=True)
        if n
    ]
    results = [future.result() for future in futures]
    cpu = cpu_seconds(served.pid) - before  # the server idles but for the slice's requests
    latencies = np.array([x for _, _, lat in results for x in lat])
    requests, errors = sum(r[0] for r in results), sum(r[1] for r in results)
    return Slice(requests, errors, seconds, latencies, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--size-mb", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--procs", type=int, default=2, help="load processes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--store", type=Path, help="fleet folder, kept for the next run")
    parser.add_argument("--extra", default="", help="more `tenantserve serve` flags")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    store = args.store or work / "store"
    ids = kept_fleet(store, models=args.models, size_mb=args.size_mb)
    sequences = [zipf_sequence(ids, 1.1, 5000, seed=k) for k in range(args.procs)]
    budget = f"{max(4, int(len(ids) * args.size_mb * 3 / 1000) + 2)}GB"
    grpc_port = free_port()
    rows: dict[str, list[Slice]] = {name: [] for name in PROTOCOLS}
    print(f"{len(ids)} models of {args.size_mb:g} MB, {args.clients} clients in {args.procs} "
          f"processes, {args.rounds} rounds of {args.seconds:g} s each; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    with (
        served_tenantserve(
            store, budget=budget, log_path=work / "tenantserve.log", cache_dir=work / "cache",
            extra_args=["--preload", "*/*", "--grpc-port", str(grpc_port), *args.extra.split()],
        ) as server,
        ProcessPoolExecutor(args.procs, mp_context=get_context("spawn")) as pool,
    ):  # fmt: skip
        targets = {"http": server.url, "grpc": f"127.0.0.1:{grpc_port}"}
        for name in PROTOCOLS:  # warm: imports in the load processes, every model once
            _slice(pool, server, name, targets[name], sequences, args.clients, 2)
        for round_ in range(args.rounds):
            for name in PROTOCOLS:
                s = _slice(pool, server, name, targets[name], sequences, args.clients,
                           args.seconds)  # fmt: skip
                rows[name].append(s)
                print(f"round {round_ + 1} {name:5} {s.rate:8.0f} req/s  "
                      f"p50 {s.quantile(0.5) * 1e3:6.2f} ms  p99 {s.quantile(0.99) * 1e3:6.2f} ms  "
                      f"cpu {s.cpu_s / max(1, s.requests) * 1e3:.3f} ms/req  errors {s.errors}",
                      flush=True)  # fmt: skip
    med = {
        name: (
            statistics.median(s.rate for s in slices),
            statistics.median(s.quantile(0.5) for s in slices),
            statistics.median(s.quantile(0.99) for s in slices),
            statistics.median(s.cpu_s / max(1, s.requests) for s in slices),
        )
        for name, slices in rows.items()
    }
    print("\n| protocol | req/s | p50 ms | p99 ms | server CPU ms/req |\n|---|---:|---:|---:|---:|")
    for name, (rate, p50, p99, cpu) in med.items():
        print(f"| {name} | {rate:.0f} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {cpu * 1e3:.3f} |")
    h, g = med["http"], med["grpc"]
    print(f"\ngRPC to HTTP: req/s {g[0] / h[0]:.2f}x, p50 {g[1] / h[1]:.2f}x, p99 "
          f"{g[2] / h[2]:.2f}x, server CPU per request {g[3] / h[3]:.2f}x; load average now "
          f"{os.getloadavg()[0]:.2f}")  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
