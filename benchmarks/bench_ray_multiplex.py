"""tenantserve against Ray Serve's own model multiplexing, on one trace, as Markdown (issue 17).

Usage: ``python benchmarks/bench_ray_multiplex.py [--models 200 --size-mb 10 --clients 16
--duration-s 60] [--only A|B] [--store DIR]``

One Zipf trace (``--zipf``, ``--seed``) over a synthetic fleet, replayed by a closed loop of
``--clients`` lean HTTP clients for ``--duration-s`` (or ``--requests``), every cache starting
empty, at the same residency on both sides: Ray holds M = ``--resident`` models (a quarter of
the fleet by default), tenantserve a budget that holds M models at their measured charge
(with the share of it the server keeps for its process's own growth).

(A) One process each: ``tenantserve serve --memory-budget <M models>`` against one Ray Serve
replica whose ``@serve.multiplexed(max_num_models_per_replica=M)`` loader makes an
``onnxruntime.InferenceSession`` from the model's ``model.onnx``; requests to Ray go through
Serve's HTTP proxy with the ``serve_multiplexed_model_id`` header.
(B) Two replicas (1 CPU each): tenantserve on Ray (``tenantserve ray deploy --replicas 2
--memory-budget <M/2 models>``, the project's integration) against Ray multiplexing with two
replicas of M/2 models each. Everything shares this machine's cores: clients, proxy, replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil

from _ray_common import (
    Run,
    drive,
    free_port,
    percentile,
    replica_metrics,
    wait_ready,
    zipf_trace,
)
from tenantserve.cache.loader import OVERHEAD_SHARE
from tenantserve.config import Settings
from tenantserve.tools.fleet.synth import write_fleet

MUX_HEADER = "serve_multiplexed_model_id"  # Ray Serve's proxy reads this request header
MUX_CACHE = "x-mux-cache"  # set by the Ray deployment below: model resident on arrival or not
MUX_REPLICA = "x-mux-replica"


def mux_deployment(resident: int, replicas: int, cpus: float, max_ongoing: int) -> Any:
    """The Ray side as a Ray user would write it (Ray's multiplexing docs): an async
    ``@serve.multiplexed`` loader, the model id from ``serve.get_multiplexed_model_id()``.
    ONNX Runtime releases the GIL, so loads and runs go to a thread (``asyncio.to_thread``)
    rather than block the replica's event loop. Defined in a function so Ray pickles it by
    value into its workers without this script on their path."""
    from ray import serve

    @serve.deployment(
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": cpus},
    )
    class MuxOnnx:
        def __init__(self, store: str, model_file: str) -> None:
            self.store = Path(store)
            self.model_file = model_file

        @serve.multiplexed(max_num_models_per_replica=resident)  # type: ignore[untyped-decorator]
        async def get_model(self, model_id: str) -> Any:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            path = str(self.store / model_id / self.model_file)
            return await asyncio.to_thread(
                ort.InferenceSession, path, options, providers=["CPUExecutionProvider"]
            )

        async def __call__(self, request: Any) -> Any:
            import numpy as np
            from starlette.responses import JSONResponse

            replica = serve.get_replica_context().replica_id.unique_id
            if request.url.path.endswith("/stats"):
                held = getattr(self, "__serve_multiplex_wrapper", None)
                count = len(held.models) if held is not None else 0
                return JSONResponse({"replica": replica, "models": count})
            model_id = serve.get_multiplexed_model_id()
            # Instrumentation only (read, never changed): Ray's LRU, as the request arrives.
            held = getattr(self, "__serve_multiplex_wrapper", None)
            cache = "hit" if held is not None and model_id in held.models else "miss"
            body = await request.json()
            tensor = body["inputs"][0]
            array = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            session = await self.get_model(model_id)
            name = session.get_inputs()[0].name
            (out,) = await asyncio.to_thread(session.run, None, {name: array})
            return JSONResponse(
                {"model_name": model_id, "outputs": [
                    {"name": "output", "datatype": "FP32", "shape": list(out.shape),
                     "data": out.ravel().tolist()}]},
                headers={MUX_CACHE: cache, MUX_REPLICA: replica},
            )  # fmt: skip

    return MuxOnnx


@contextlib.contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    import ray
    from ray import serve

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        own_sigterm()
        yield
    finally:
        try:
            with contextlib.suppress(Exception):
                serve.shutdown()
        finally:
            ray.shutdown()


def wait_running(url: str, app: str, timeout_s: float = 180) -> None:
    """Until Serve says the app runs and its proxy answers (no model request: caches stay
    empty)."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None and str(status.status).endswith("RUNNING"):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/healthz", timeout=2).status_code == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"Serve app {app} not running after {timeout_s}s")


def mux_stats(url: str, replicas: int, tries: int = 40) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(tries):
        stats = httpx.post(f"{url}/stats", timeout=30).json()
        seen[stats["replica"]] = stats
        if len(seen) >= replicas:
            break
    return seen


def ledgers(url: str, replicas: int, tries: int = 40) -> dict[str, tuple[float, ...]]:
    """Each tenantserve process's (ledger bytes, resident models), from its ``/metrics``."""
    names = ("tenantserve_memory_used_bytes", "tenantserve_loaded_models")
    return replica_metrics(url, names, replicas, tries)


def replica_rss() -> str:
    """RSS of this run's Serve replicas: worker processes of the Ray cluster this script
    started (its descendants), named by Ray after their actor class."""
    sizes = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ServeReplica" in " ".join(proc.cmdline()):
                sizes.append(proc.memory_info().rss / 2**20)
    return "replica RSS " + ", ".join(f"{size:.0f}" for size in sorted(sizes)) + " MiB"


class Bench:
    """The fleet, the trace and the options every configuration shares."""

    def __init__(self, args: argparse.Namespace, store: Path, ids: list[str], tmp: Path) -> None:
        self.args, self.store, self.ids, self.tmp = args, store, ids, tmp
        length = args.requests or int(args.duration_s * args.trace_rate)
        self.trace = zipf_trace(ids, length, args.zipf, args.seed)
        self.duration = None if args.requests else float(args.duration_s)

    def replay(self, url: str, name: str, **kwargs: Any) -> Run:
        bodies: dict[int, str] = {}
        cpu: list[float] = []
        calls, wall = asyncio.run(
            drive(url, self.trace, self.args.clients, duration_s=self.duration,
                  error_bodies=bodies, client_cpu=cpu, **kwargs)
        )  # fmt: skip
        run = Run(name, calls, wall)
        run.notes.append(f"client CPU {cpu[0] / max(len(calls), 1) * 1e6:.0f} us a request")
        failed = Counter(c.status for c in calls if c.status != 200)
        for status, count in sorted(failed.items()):
            run.notes.append(f"{count} x {status}, the first: `{bodies.get(status, '')}`")
        if self.duration is not None and len(calls) >= len(self.trace):
            run.notes.append(f"trace exhausted ({len(self.trace)}): raise --trace-rate")
        return run

    def tenantserve_process(self, budget: int) -> Run:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "tenantserve", "serve", "--store", str(self.store),
               "--port", str(port), "--memory-budget", str(budget), "--threads", "2",
               "--cache-dir", str(self.tmp / f"cache-{port}"),
               "--log-level", "warning"]  # fmt: skip
        with (self.tmp / f"serve-{port}.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_ready(url)
                run = self.replay(url, "tenantserve serve (1 process, 2 threads)")
                used, held = ledgers(url, 1)["process"]
                rss = psutil.Process(proc.pid).memory_info().rss
                run.notes.append(
                    f"models held {held:.0f} (ledger {used / 2**20:.1f} MiB); "
                    f"RSS {rss / 2**20:.0f} MiB"
                )
                return run
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def tenantserve_ray(self, budget: int, replicas: int) -> Run:
        from tenantserve.integrations.ray_serve import RayOptions, deploy, shutdown

        # What `tenantserve ray deploy --replicas N --memory-budget B` builds (its defaults:
        # 1 CPU and 1 thread per replica, 16 ongoing requests).
        settings = Settings(
            store=str(self.store),
            memory_budget=budget,
            threads=1,
            cache_dir=self.tmp / f"cache-ray-{replicas}",
            log_level="warning",
        )
        options = RayOptions(
            haproxy=self.args.haproxy,
            num_cpus=os.cpu_count(),
            replicas=replicas,
            replica_cpus=1.0,
            http_port=free_port(),
            max_ongoing_requests=self.args.max_ongoing,
        )
        try:
            url = deploy(settings, options)
            own_sigterm()
            wait_ready(url)
            run = self.replay(url, f"tenantserve on Ray Serve ({replicas} replicas)")
            books = sorted(ledgers(url, replicas).values(), key=lambda book: book[1])
            run.notes.append(
                "models held " + ", ".join(f"{n:.0f}" for _, n in books)
                + " (ledgers " + ", ".join(f"{u / 2**20:.1f}" for u, _ in books) + " MiB)"
            )  # fmt: skip
            run.notes.append(replica_rss())
            return run
        finally:
            shutdown(options)

    def ray_multiplex(self, resident: int, replicas: int) -> Run:
        from ray import serve

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cpus = os.cpu_count() or 1
        with local_ray(cpus):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = mux_deployment(resident, replicas, cpus / replicas, self.args.max_ongoing).bind(
                str(self.store), self.args.ray_model_file
            )
            serve.run(app, name="mux", route_prefix="/", blocking=False)
            wait_running(url, "mux")
            run = self.replay(
                url,
                f"Ray multiplexing ({replicas} replica{'s' if replicas > 1 else ''} "
                f"x M={resident})",
                headers=lambda model_id: {MUX_HEADER: model_id},
                cache_header=MUX_CACHE,
                replica_header=MUX_REPLICA,
            )
            held = sorted(stats["models"] for stats in mux_stats(url, replicas).values())
            run.notes.append("models held " + ", ".join(map(str, held)))
            run.notes.append(replica_rss())
            return run


def charge_per_model(bench: Bench) -> int:
    """What tenantserve's ledger charges one fleet model (a mapped ORT file and the session's
    own memory), measured on a throwaway process: two loads of the same shape, ledger / 2."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tenantserve", "serve", "--store", str(bench.store), "--port",
           str(port), "--threads", "1", "--cache-dir", str(bench.tmp / "cache-calibrate"),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url)
        asyncio.run(drive(url, bench.ids[:2], 1))
        return math.ceil(ledgers(url, 1)["process"][0] / 2)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def first_calls(run: Run) -> list[float]:
    """Each model's first request of the run (the cache starts empty): its latency."""
    seen: dict[str, float] = {}
    for call in sorted(run.calls, key=lambda c: c.started_s):
        if call.status == 200 and call.model_id not in seen:
            seen[call.model_id] = call.seconds
    return list(seen.values())


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs > 0 and math.isfinite(ours / theirs) else "n/a"


def table(pairs: Sequence[tuple[Run, Run]]) -> str:
    lines = [
        "| configuration | requests ok | errors | req/s | p50 ms | p99 ms | misses | miss p50 ms"
        " | first-call p50 ms | req/s ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ours, theirs in pairs:
        for run in (ours, theirs):
            misses = [c.seconds for c in run.ok if c.cache == "miss"]
            ratios = (
                f"{ratio(ours.rate, theirs.rate)} | {ratio(ours.pct(0.99), theirs.pct(0.99))}"
                if run is ours
                else "1 | 1"
            )
            lines.append(
                f"| {run.name} | {len(run.ok)} | {len(run.calls) - len(run.ok)} | "
                f"{run.rate:.1f} | {ms(run.pct(0.5))} | {ms(run.pct(0.99))} | {len(misses)} | "
                f"{ms(percentile(misses, 0.5))} | {ms(percentile(first_calls(run), 0.5))} | "
                f"{ratios} |"
            )
    return "\n".join(lines)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every finally runs: Serve, Ray and servers stop


def own_sigterm() -> None:
    """SIGTERM unwinds through the finally blocks; called again after ``ray.init``, whose
    core worker installs a handler that aborts the driver and orphans Ray's agents."""
    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--size-mb", type=float, default=10.0)
    parser.add_argument("--resident", type=int, default=0, help="M (default: models / 4)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=0, help="a request count, not a time")
    parser.add_argument("--trace-rate", type=float, default=2000.0,
                        help="trace length per second of --duration-s")  # fmt: skip
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--max-ongoing", type=int, default=16,
                        help="max_ongoing_requests of every Ray replica, both sides")  # fmt: skip
    parser.add_argument("--ray-model-file", default="model.onnx",
                        help="what Ray opens (model.ort: the ORT-format copy)")  # fmt: skip
    parser.add_argument("--charge-mib", type=float,
                        help="tenantserve budget a resident model (default: measured)")  # fmt: skip
    parser.add_argument("--haproxy", action="store_true",
                        help="HAProxy ingress on both sides: no model routing")  # fmt: skip
    parser.add_argument("--only", choices=["A", "B"])
    parser.add_argument("--store", type=Path, help="a fleet folder to reuse (or write)")
    args = parser.parse_args(argv)
    resident = args.resident or args.models // 4
    own_sigterm()
    if args.haproxy:  # read by every Serve process of the local clusters started below
        from tenantserve.integrations.ray_serve import HAPROXY_ENV

        os.environ[HAPROXY_ENV] = "1"

    tmp = Path(tempfile.mkdtemp(prefix="bench-raymux-"))
    try:
        store = args.store or tmp / "store"
        ids = sorted(str(p.parent.relative_to(store)) for p in store.glob("*/*/model.json"))
        if len(ids) != args.models:
            shutil.rmtree(store, ignore_errors=True)
            ids = write_fleet(store, models=args.models, size_bytes=int(args.size_mb * 1e6),
                              seed=7)  # fmt: skip
        bench = Bench(args, store, ids, tmp)
        # Both sides read their files from the page cache: tenantserve maps model.ort, Ray
        # opens --ray-model-file; neither pays the disk for being first.
        for model_id in ids:
            for path in (store / model_id).iterdir():
                with path.open("rb") as handle:
                    while handle.read(1 << 24):
                        pass
        fleet_mb = sum((store / i / "model.onnx").stat().st_size for i in ids) / 1e6
        measured = args.charge_mib is None
        charge = charge_per_model(bench) if measured else int(args.charge_mib * 2**20)
        # M models, plus what the server charges its process beyond its models (up to
        # 1/OVERHEAD_SHARE of the budget, which it did charge at a quarter: 37 of 50 held
        # without it), plus half a model of slack: tenantserve holds M models, as Ray does.
        room = 1 - 1 / OVERHEAD_SHARE
        budget_a = int(charge * (resident + 0.5) / room)
        budget_b = int(charge * (resident / 2 + 0.5) / room)

        print("## tenantserve against Ray Serve's model multiplexing (issue 17)\n")
        print("Command: `" + shlex.join([sys.executable, *sys.argv]) + "`\n")
        print(
            f"Machine: {platform.machine()}, {os.cpu_count()} cores shared by clients, proxy and "
            f"replicas; {psutil.virtual_memory().total / 2**30:.0f} GiB; Python "
            f"{platform.python_version()}, Ray {__import__('ray').__version__}, ONNX Runtime "
            f"{__import__('onnxruntime').__version__}.\n"
        )
        print(
            f"Fleet: {len(ids)} synthetic models, {fleet_mb / len(ids):.2f} MB each "
            f"(`model.onnx`), {fleet_mb:.0f} MB in all. Trace: Zipf s={args.zipf}, seed "
            f"{args.seed}, {args.clients} closed-loop clients, "
            + (f"{args.requests} requests" if args.requests else f"{args.duration_s:g} s")
            + f"; caches start empty. Residency: M={resident} models. tenantserve's ledger "
            f"charges {charge / 2**20:.2f} MiB a model "
            f"({'measured' if measured else '--charge-mib'}), so its budgets are "
            f"{budget_a / 2**20:.0f} MiB (A) and {budget_b / 2**20:.0f} MiB per replica (B); "
            f"Ray's loader opens `{args.ray_model_file}`, max_ongoing_requests "
            f"{args.max_ongoing} on every Ray replica. Serve's ingress: "
            + (
                "HAProxy, for both sides (no routing by model on either).\n"
                if args.haproxy
                else "its Python proxy (routing by model on both sides).\n"
            )
        )
        steps: list[tuple[str, Callable[[], tuple[Run, Run]]]] = []
        if args.only in (None, "A"):
            steps.append(("A", lambda: (bench.tenantserve_process(budget_a),
                                        bench.ray_multiplex(resident, 1))))  # fmt: skip
        if args.only in (None, "B"):
            steps.append(("B", lambda: (bench.tenantserve_ray(budget_b, 2),
                                        bench.ray_multiplex(resident // 2, 2))))  # fmt: skip
        pairs: list[tuple[Run, Run]] = []
        for name, step in steps:
            began = time.perf_counter()
            pairs.append(step())
            print(f"[{name}: {time.perf_counter() - began:.0f} s]", file=sys.stderr, flush=True)

        print(
            "Ratios are tenantserve / Ray on the row above the Ray row. misses: requests whose "
            "model was not resident as they arrived (`X-Tenantserve-Cache`; on Ray, its LRU "
            "read by the deployment). first-call: each model's first request of the run.\n"
        )
        print(table(pairs))
        print()
        for pair in pairs:
            for run in pair:
                if run.notes:
                    print(f"- {run.name}: " + "; ".join(run.notes))
        failed = [run.name for pair in pairs for run in pair if not run.ok]
        if failed:
            print(f"no request succeeded: {failed}", file=sys.stderr)
            return 1
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
