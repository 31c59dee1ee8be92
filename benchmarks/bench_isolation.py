"""Tenant isolation figures, as Markdown: a noisy neighbour, an overload, a storm of first calls.

Usage: ``python benchmarks/bench_isolation.py [--duration-s 20 --storm-models 1000 ...]``

(a) Noisy neighbour: tenant B sends a steady open-loop rate to its model, first alone, then
while tenant A floods at 10x the capacity measured for A alone (open loop, its own process).
B's errors and p50/p99 in both phases; A's answers by status. (b) Overload: half capacity,
a bounded burst at 4x capacity, half capacity again; how the burst was shed (statuses,
Retry-After) and how soon after it every request was again served within 2x the p99 before.
(c) Load storm: warm open-loop
traffic to resident models, first undisturbed, then while N first calls to N distinct models
(half OIP, half SageMaker) arrive at once and are retried after Retry-After until served.
Warm p50/p99 in both phases; the storm's answers by status, whether each refusal carried
Retry-After and how fast refusals came; /v2/health/ready polled throughout.
Server: ``tenantserve serve`` on loopback with API keys; clients in separate processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from isolation_load import FirstCall, Outcome, Target, run_stream, storm
from tenantserve.tools.fleet.synth import write_synthetic_model

KEYS = {"noisy": "noisy-tenant-key-000001", "quiet": "quiet-tenant-key-000001",
        "storm": "storm-tenant-key-000001", "warm": "warm-tenant-key-0000001"}  # fmt: skip


def heavy_model(folder: Path, *, layers: int, width: int = 256) -> None:
    """A model whose one-row predict costs about ``layers`` x 3 us of one core."""
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((16, width)) / 4).astype(np.float32)
    w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W0"], ["h0"])]
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"])]  # fmt: skip
    nodes.append(helper.make_node("ReduceSum", [f"h{layers}", "axes"], ["output"], keepdims=1))
    inits = [numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]  # fmt: skip
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])], inits,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(folder / "model.onnx"))


def write_keys(store: Path) -> None:
    """One key per tenant, scoped to the tenant's prefix (``keys.toml`` in the store)."""
    entries = [
        f'[[keys]]\nname = "{t}"\nkey = "{k}"\nscopes = ["{t}/*"]\n' for t, k in KEYS.items()
    ]
    (store / "keys.toml").write_text("\n".join(entries))


@contextlib.contextmanager
def serve(store: Path, port: int, *flags: str) -> Iterator[str]:
    """``tenantserve serve`` on loopback until the block ends; yields its URL once ready."""
    log = store / f"server-{port}.log"
    cmd = [sys.executable, "-m", "tenantserve", "serve", "--store", str(store), "--port",
           str(port), "--cache-dir", str(store / ".cache"), "--log-level", "warning",
           "--api-keys", str(store / "keys.toml"), *flags]  # fmt: skip
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server not ready after 60 s")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _oip(port: int, model: str, tenant: str) -> Target:
    data = ",".join(["0.5"] * 16)
    body = f'{{"inputs":[{{"name":"input","datatype":"FP32","shape":[1,16],"data":[{data}]}}]}}'
    body_bytes = body.encode()
    headers = (("Content-Type", "application/json"), ("X-Api-Key", KEYS[tenant]))
    return Target("127.0.0.1", port, f"/v2/models/{model}/infer", body_bytes, headers)


def _sagemaker(port: int, model: str, tenant: str) -> Target:
    headers = (("Content-Type", "text/csv"), ("X-Amzn-SageMaker-Target-Model", model),
               ("X-Api-Key", KEYS[tenant]))  # fmt: skip
    return Target("127.0.0.1", port, "/invocations", ",".join(["0.5"] * 16).encode(), headers)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def _codes(outcome: Outcome) -> str:
    counts = Counter(outcome.statuses)
    text = ", ".join(f"{n} x {code}" for code, n in sorted(counts.items()))
    return text + (f", {outcome.errors} socket errors" if outcome.errors else "")


def _row(name: str, outcome: Outcome) -> str:
    ok = outcome.ok()
    bad = len(outcome.statuses) - len(ok) + outcome.errors
    return (f"| {name} | {len(outcome.statuses) + outcome.errors} | {bad} | "
            f"{_pct(ok, 0.5):.1f} | {_pct(ok, 0.99):.1f} | {_pct(ok, 1.0):.1f} |")  # fmt: skip


def noisy_neighbour(
    root: Path, port: int, args: argparse.Namespace, pool: ProcessPoolExecutor
) -> None:
    for tenant in ("noisy", "quiet"):
        heavy_model(root / tenant / "m", layers=args.layers)
    flags = ("--threads", str(args.threads), "--preload", "noisy/m", "--preload", "quiet/m",
             "--tenant-max-concurrent", str(args.tenant_max_concurrent))  # fmt: skip
    with serve(root, port, *flags):
        a, b = _oip(port, "noisy/m", "noisy"), _oip(port, "quiet/m", "quiet")
        capacity = pool.submit(
            run_stream, "closed", a, {"concurrency": 8, "duration_s": 3}
        ).result()
        cap_rate = len(capacity.ok()) / capacity.wall_s
        flood_rate = 10 * cap_rate
        d = args.duration_s
        steady = {"rate": args.quiet_rate, "duration_s": d}
        alone = pool.submit(
            run_stream, "open", b, {**steady, "start_at": time.time() + 0.5}
        ).result()
        start = time.time() + 1.0
        flood = pool.submit(
            run_stream,
            "open",
            a,
            {"rate": flood_rate, "duration_s": d + 1, "start_at": start - 0.5},
        )
        quiet = pool.submit(run_stream, "open", b, {**steady, "start_at": start})
        noisy_out, quiet_out = flood.result(), quiet.result()
    print(
        f"## Noisy neighbour\n\nModel: {args.layers} MatMul+Tanh layers (256 wide), one row "
        f"per request; server `--threads {args.threads} --tenant-max-concurrent "
        f"{args.tenant_max_concurrent}`, API keys on. Capacity for tenant A alone (closed loop, "
        f"8 clients, 3 s): **{cap_rate:.0f} req/s**. A then floods at 10x = "
        f"{flood_rate:.0f} req/s (open loop) while B sends {args.quiet_rate:.0f} req/s "
        f"(open loop) for {d:.0f} s. Latency from when each request was due.\n"
    )
    print("| stream | requests | not 200 | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("B alone", alone))
    print(_row("B while A floods", quiet_out))
    print(_row("A flooding", noisy_out))
    ratio = _pct(quiet_out.ok(), 0.99) / _pct(alone.ok(), 0.99)
    print(
        f"\nB's answers while A floods: {_codes(quiet_out)}; B's p99 = **{ratio:.2f}x** its "
        f"p99 alone. A's answers: {_codes(noisy_out)}.\n"
    )


def overload(root: Path, port: int, args: argparse.Namespace, pool: ProcessPoolExecutor) -> None:
    heavy_model(root / "noisy" / "m", layers=args.layers)
    flags = ("--threads", str(args.threads), "--preload", "noisy/m",
             "--max-in-flight", str(args.overload_in_flight),
             "--queue-timeout-s", str(args.overload_queue_s))  # fmt: skip
    with serve(root, port, *flags):
        target = _oip(port, "noisy/m", "noisy")
        capacity = pool.submit(
            run_stream, "closed", target, {"concurrency": 8, "duration_s": 3}
        ).result()
        cap_rate = len(capacity.ok()) / capacity.wall_s
        normal = {"rate": cap_rate / 2, "duration_s": args.recovery_window_s}
        before = pool.submit(
            run_stream, "open", target, {**normal, "start_at": time.time() + 0.5}
        ).result()
        start = time.time() + 1.0
        burst_f = pool.submit(
            run_stream,
            "open",
            target,
            {"rate": 4 * cap_rate, "duration_s": args.burst_s, "start_at": start},
        )
        after_f = pool.submit(
            run_stream, "open", target, {**normal, "start_at": start + args.burst_s}
        )
        burst, after = burst_f.result(), after_f.result()
    limit_s = 2 * _pct(before.ok(), 0.99) / 1000
    recovered_s = _recovered_after(after, limit_s)
    refused = [r for s, r in zip(burst.statuses, burst.retry_after, strict=True) if s != 200]
    print(
        f"## Overload\n\nThe noisy-neighbour model, one tenant, server `--threads "
        f"{args.threads} --max-in-flight {args.overload_in_flight} --queue-timeout-s "
        f"{args.overload_queue_s:g}`. Capacity (closed loop, 8 clients, 3 s): "
        f"**{cap_rate:.0f} req/s**. Half of it for {args.recovery_window_s:.0f} s, then a burst "
        f"at 4x = {4 * cap_rate:.0f} req/s for {args.burst_s:.0f} s (open loop), then half "
        f"again from the moment the burst stops sending.\n"
    )
    print("| stream | requests | not 200 | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("before (half capacity)", before))
    print(_row("burst (4x capacity)", burst))
    print(_row("after (half capacity)", after))
    recovery = (
        f"**{recovered_s:.1f} s** after the burst stopped sending"
        if recovered_s is not None
        else "**not within the window**"
    )
    print(
        f"\nBurst answers: {_codes(burst)}; refusals with Retry-After: "
        f"{sum(refused)} of {len(refused)}. Recovered (from then on every request 200 within "
        f"2x the p99 before, {limit_s * 1000:.1f} ms): {recovery}. After-stream answers: "
        f"{_codes(after)}.\n"
    )


def _recovered_after(outcome: Outcome, limit_s: float) -> float | None:
    """The earliest due time from which every request was 200 within ``limit_s``."""
    calls = sorted(zip(outcome.due_s, outcome.statuses, outcome.latencies, strict=True))
    recovered: float | None = 0.0
    for due, status, latency in calls:
        if status != 200 or latency > limit_s:
            recovered = None
        elif recovered is None:
            recovered = due
    if outcome.errors:
        return None
    return recovered


def load_storm(root: Path, port: int, args: argparse.Namespace, pool: ProcessPoolExecutor) -> None:
    warm_ids = [f"warm/m{i}" for i in range(4)]
    storm_ids = [f"storm/m{i:04d}" for i in range(args.storm_models)]
    for i, model in enumerate(warm_ids + storm_ids):
        write_synthetic_model(root / model, size_bytes=args.storm_model_bytes, seed=i)
    flags = [f"--preload={m}" for m in warm_ids]
    d = args.storm_window_s
    warm = [_oip(port, m, "warm") for m in warm_ids]
    options = {"rate": args.warm_rate / len(warm), "duration_s": d}
    pacing = ("--max-loads-per-s", str(args.max_loads_per_s)) if args.max_loads_per_s else ()
    extra = tuple(args.storm_server_flags.split())
    with serve(root, port, *flags, *pacing, *extra, "--memory-budget", "3GiB") as url:
        start = time.time() + 0.5
        undisturbed = Outcome()
        for future in [pool.submit(run_stream, "open", t, {**options, "start_at": start})
                       for t in warm]:  # fmt: skip
            undisturbed.merge(future.result())
        start = time.time() + 0.5
        futures = [pool.submit(run_stream, "open", t, {**options, "start_at": start})
                   for t in warm]  # fmt: skip
        ready_failures, probes = _poll_ready(url, seconds=d + 1)
        time.sleep(max(0.0, start + 1.0 - time.time()))
        targets = [(_oip if i % 2 == 0 else _sagemaker)(port, m, "storm")
                   for i, m in enumerate(storm_ids)]  # fmt: skip
        calls = asyncio.run(
            storm(targets, deadline_s=args.storm_deadline_s, clients=args.storm_clients)
        )
        during = Outcome()
        for future in futures:
            during.merge(future.result())
        probes_done = probes()
        loads = _metric_sum(url, "tenantserve_model_loading_seconds")
        floor = _refusal_floor(storm_ids, warm, options, args, pool)
    refused = [(i, c) for i, c in enumerate(calls) if c.status != 200]
    # Refusals are 503 (load queue full) or 429 (the tenant's share of it, or SageMaker's
    # throttle); anything else is wrong.
    wrong = [i for i, c in refused if c.status not in (429, 503)]
    served = [c.served_s for c in calls if c.served_s is not None]
    print(
        f"## Load storm\n\n{len(storm_ids)} first calls to distinct models "
        f"({args.storm_model_bytes // 1000} kB ONNX each; even ones OIP, odd ones SageMaker) "
        f"sent {'at once' if not args.storm_clients else f'from {args.storm_clients} clients'}"
        f", 1 s into {d:.0f} s of warm traffic ({args.warm_rate:.0f} req/s over "
        f"{len(warm_ids)} resident models, open loop); each refused call retries after the "
        f"Retry-After it got. Server: `{' '.join((*pacing, *extra)) or 'defaults'}`, API keys "
        "on.\n"
    )
    print("| warm traffic | requests | not 200 | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("undisturbed", undisturbed))
    print(_row("during the storm", during))
    ratio = _pct(during.ok(), 0.99) / _pct(undisturbed.ok(), 0.99)
    print(
        f"\nWarm p99 during the storm = **{ratio:.2f}x** undisturbed; warm answers during "
        f"the storm: {_codes(during)}.\n"
    )
    refusal_s = [c.first_s for _, c in refused]
    refusal_latency_s = [c.first_latency_s for _, c in refused]
    retry_s = [c.retry_after_s for _, c in refused if c.retry_after_s is not None]
    print("| storm | value |\n|---|---:|")
    print(f"| first answer 200 | {len(calls) - len(refused)} |")
    print(f"| first answer refused: 503 / 429 (OIP, SageMaker) | "
          f"{sum(1 for _, c in refused if c.status == 503)} / "
          f"{sum(1 for i, c in refused if c.status == 429 and i % 2 == 0)}, "
          f"{sum(1 for i, c in refused if c.status == 429 and i % 2 == 1)} |")  # fmt: skip
    print(f"| refused with another status or a socket error | {len(wrong)} |")
    print(f"| refusals without Retry-After | {len(refused) - len(retry_s)} |")
    if refused:
        print(f"| refusal received after (from the storm's start; client included): "
              f"p50 / p99 / max ms | {_pct(refusal_s, 0.5):.0f} / {_pct(refusal_s, 0.99):.0f} "
              f"/ {_pct(refusal_s, 1.0):.0f} |")  # fmt: skip
        print(f"| refusal latency (sent to answered): p50 / p99 / max ms | "
              f"{_pct(refusal_latency_s, 0.5):.1f} / {_pct(refusal_latency_s, 0.99):.1f} "
              f"/ {_pct(refusal_latency_s, 1.0):.1f} |")  # fmt: skip
        floor_s = [c.first_latency_s for c in floor if c.status != 200]
        print(f"| the same, from bare uvicorn refusing every first call (same client, same "
              f"warm traffic; `refusal_floor.py`): p50 / p99 / max ms | "
              f"{_pct(floor_s, 0.5):.1f} / {_pct(floor_s, 0.99):.1f} / "
              f"{_pct(floor_s, 1.0):.1f} |")  # fmt: skip
        print(
            f"| Retry-After given: min / median / max s | {min(retry_s):.0f} / "
            f"{statistics.median(retry_s):.0f} / {max(retry_s):.0f} |"
        )
    print(
        f"| served within {args.storm_deadline_s:.0f} s | {len(served)} of {len(calls)} "
        f"(last at {max(served, default=float('nan')):.1f} s; "
        f"{sum(c.attempts for c in calls)} attempts in all) |"
    )
    if loads[1]:
        print(f"| loads: count, mean s | {loads[1]:.0f}, {loads[0] / loads[1]:.3f} |")
    print(
        f"| /v2/health/ready probes failed (1 s timeout) | {ready_failures()} of {probes_done} |\n"
    )


def _refusal_floor(
    storm_ids: list[str],
    warm: list[Target],
    options: dict[str, float],
    args: argparse.Namespace,
    pool: ProcessPoolExecutor,
) -> list[FirstCall]:
    """The storm's first attempts sent to bare uvicorn that refuses each (refusal_floor.py),
    while the same warm traffic runs against tenantserve: the client's and HTTP stack's share
    of a refusal's latency, measured beside it."""
    port = _port()
    script = Path(__file__).with_name("refusal_floor.py")
    with subprocess.Popen([sys.executable, str(script), str(port)]) as floor:
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            start = time.time() + 0.5
            window = {**options, "duration_s": 5.0, "start_at": start}
            futures = [pool.submit(run_stream, "open", t, window) for t in warm]
            time.sleep(max(0.0, start + 1.0 - time.time()))
            targets = [(_oip if i % 2 == 0 else _sagemaker)(port, m, "storm")
                       for i, m in enumerate(storm_ids)]  # fmt: skip
            calls = asyncio.run(storm(targets, deadline_s=0.0, clients=args.storm_clients))
            for future in futures:
                future.result()
        finally:
            floor.terminate()
    return calls


def _metric_sum(url: str, histogram: str) -> tuple[float, float]:
    """(sum, count) of a histogram read from /metrics."""
    values = {"_sum": 0.0, "_count": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        for suffix in values:
            if line.startswith(histogram + suffix + " "):
                values[suffix] = float(line.split()[-1])
    return values["_sum"], values["_count"]


def _poll_ready(url: str, *, seconds: float) -> tuple[Callable[[], int], Callable[[], int]]:
    failures, done = [0], [0]

    def poll() -> None:
        end = time.time() + seconds
        with httpx.Client(timeout=1.0) as client:
            while time.time() < end:
                try:
                    ok = client.get(f"{url}/v2/health/ready").status_code == 200
                except httpx.HTTPError:
                    ok = False
                failures[0] += not ok
                done[0] += 1
                time.sleep(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def finished() -> int:
        thread.join()
        return done[0]

    return (lambda: failures[0]), finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--layers", type=int, default=3000, help="noisy-neighbour model cost")
    parser.add_argument("--threads", type=int, default=1, help="predict threads (noisy)")
    parser.add_argument("--tenant-max-concurrent", type=int, default=32)
    parser.add_argument("--quiet-rate", type=float, default=10.0)
    parser.add_argument("--warm-rate", type=float, default=100.0)
    parser.add_argument("--storm-models", type=int, default=1000)
    parser.add_argument("--storm-model-bytes", type=int, default=20_000)
    parser.add_argument("--storm-deadline-s", type=float, default=120.0)
    parser.add_argument(
        "--storm-clients", type=int, default=0, help="storm requests in flight at most (0: all)"
    )
    parser.add_argument(
        "--storm-server-flags", default="", help="more `tenantserve serve` flags for the storm"
    )
    parser.add_argument(
        "--storm-window-s",
        type=float,
        default=45.0,
        help="warm traffic measured for this long, undisturbed and in the storm",
    )
    parser.add_argument("--max-loads-per-s", type=float, default=25.0)
    parser.add_argument("--burst-s", type=float, default=10.0, help="overload burst length")
    parser.add_argument("--recovery-window-s", type=float, default=10.0)
    parser.add_argument("--overload-in-flight", type=int, default=8)
    parser.add_argument("--overload-queue-s", type=float, default=0.5)
    parser.add_argument("--only", choices=["noisy", "overload", "storm"], default=None)
    args = parser.parse_args()
    print(
        f"# tenantserve isolation benchmark\n\nMachine: {os.cpu_count()} cores shared by server "
        "and clients, loopback.\n"
    )
    with tempfile.TemporaryDirectory(prefix="tenantserve-iso-") as tmp, \
            ProcessPoolExecutor(4) as pool:  # fmt: skip
        scenarios = (("noisy", noisy_neighbour), ("overload", overload), ("storm", load_storm))
        for name, scenario in scenarios:
            if args.only in (None, name):
                store = Path(tmp) / name
                store.mkdir()
                write_keys(store)
                scenario(store, _port(), args, pool)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
