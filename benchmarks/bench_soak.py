"""Soak at twice capacity: do the server's memory, open files or threads creep? (RELIABILITY 31)

Usage: ``python benchmarks/bench_soak.py [--duration-s 600 --models 1000 --rate-x 2]``

Writes ``--models`` small synthetic ONNX models into a temporary store and measures what one
model really holds in a probe server (``tenantserve_memory_used_bytes`` over the resident
count), then starts ``tenantserve serve`` as a subprocess with a memory budget of a quarter of
the fleet, so the Zipf mix keeps loading and evicting. Capacity is measured first (closed loop,
16 clients, over the same mix); then open-loop traffic arrives at ``--rate-x`` times that
capacity for ``--duration-s``, with up to 2,048 connections (more than the server admits and
queues, so overload is shed by the server, not queued in the client). Every second the server's
RSS, open file descriptors and threads are sampled with psutil.

Prints a Markdown report: requests sent, answered by status, lost (sent and never answered:
the goal is 0), latency, and each curve's first and last window, min, max and slope per
minute; writes ``soak.png`` and ``soak.json`` beside ``report.md`` under ``--out``
(benchmarks/out/soak by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from tenantserve.tools.bench.loadgen import LoadSpec, replay, warm_up
from tenantserve.tools.bench.results import STATUS_CONNECTION_ERROR, STATUS_TIMEOUT, RunResult
from tenantserve.tools.bench.servers import Served, served_tenantserve
from tenantserve.tools.bench.traces import generate
from tenantserve.tools.fleet.synth import write_fleet
from tenantserve.units import parse_size

PROBE_MODELS = 32
CAPACITY_CLIENTS = 16
MAX_CONNECTIONS = 2048  # above the server's 256 admitted + 1,024 queued
REQUEST_TIMEOUT_S = 30.0
DRAIN_S = 30.0
SEED = 7


@dataclass(frozen=True)
class Sample:
    """The server process at ``t_s`` seconds into the soak."""

    t_s: float
    rss_bytes: int
    fds: int
    threads: int


@dataclass(frozen=True)
class Curve:
    """One sampled quantity summarised: is it flat, or does it creep?"""

    name: str
    unit: str
    first: float  # mean over the first window
    last: float  # mean over the last window
    low: float
    high: float
    slope_per_min: float  # least squares over the samples after the first window
    window_s: float


class ProcessSampler:
    """Samples a process's RSS, open file descriptors and threads every ``interval_s``."""

    def __init__(self, pid: int, *, interval_s: float = 1.0) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._start = 0.0
        self.samples: list[Sample] = []

    def start(self) -> None:
        self._start = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error), self._process.oneshot():
                self.samples.append(
                    Sample(
                        time.perf_counter() - self._start,
                        int(self._process.memory_info().rss),
                        int(self._process.num_fds()),
                        int(self._process.num_threads()),
                    )
                )
            if self._stop.wait(self._interval_s):
                return


def summarise(name: str, unit: str, t_s: Sequence[float], values: Sequence[float]) -> Curve:
    """First and last window means (a minute, or a quarter of a shorter run), range, slope."""
    t = np.asarray(t_s, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    span = float(t[-1] - t[0]) if len(t) > 1 else 0.0
    window = min(60.0, max(span / 4, 1.0))
    first = v[t <= t[0] + window]
    last = v[t >= t[-1] - window]
    settled = t > t[0] + window  # the cache fills in the first window: judge the rest
    slope = 0.0
    if settled.sum() >= 3:
        slope = float(np.polyfit(t[settled] / 60.0, v[settled], 1)[0])
    return Curve(
        name, unit, float(first.mean()), float(last.mean()), float(v.min()), float(v.max()),
        slope, window,
    )  # fmt: skip


def curves(samples: Sequence[Sample]) -> list[Curve]:
    t = [s.t_s for s in samples]
    return [
        summarise("RSS", "MiB", t, [s.rss_bytes / 2**20 for s in samples]),
        summarise("open files", "fds", t, [s.fds for s in samples]),
        summarise("threads", "threads", t, [s.threads for s in samples]),
    ]


def model_bytes(store: Path, ids: Sequence[str], work: Path) -> int:
    """What one model holds once resident, measured by a probe server (mean of a few)."""
    with served_tenantserve(
        store, budget="8GiB", log_path=work / "probe.log", cache_dir=work / "probe-cache"
    ) as probe:
        failures = warm_up(probe.url, ids[:PROBE_MODELS])
        if failures:
            raise RuntimeError(f"{failures} of {PROBE_MODELS} probe loads failed")
        status = httpx.get(f"{probe.url}/v1/status", timeout=30).json()
    sizes = [m["bytes"] for m in status["models"]]
    return int(sum(sizes) / len(sizes))


def server_metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            if sample.name == "tenantserve_rejected_requests_total":
                key = f"rejected:{sample.labels['reason']}"
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def closed_loop_capacity(served: Served, ids: Sequence[str], seconds: float) -> float:
    """Answered-200 requests per second with 16 clients over the Zipf mix (after a warm-up)."""
    trace = generate("zipf", ids, rate=5000, duration_s=max(seconds, 3.0) * 2, seed=SEED + 1)
    spec = LoadSpec(served.url, concurrency=CAPACITY_CLIENTS, duration_s=3.0)
    replay(trace, spec, label="warm-up", server_pid=served.pid)  # fill the cache first
    spec = LoadSpec(served.url, concurrency=CAPACITY_CLIENTS, duration_s=seconds)
    run = replay(trace, spec, label="capacity", server_pid=served.pid)
    ok = sum(1 for o in run.outcomes if o.status == 200)
    return ok / run.wall_s


def request_summary(run: RunResult) -> dict[str, Any]:
    by_status = Counter(o.status for o in run.outcomes)
    lost = by_status.get(STATUS_TIMEOUT, 0) + by_status.get(STATUS_CONNECTION_ERROR, 0)
    ok = sorted(o.latency_s for o in run.outcomes if o.status == 200)
    lags = sorted(o.lag_s for o in run.outcomes)

    def pct(values: Sequence[float], q: float) -> float | None:
        return values[min(len(values) - 1, int(q * len(values)))] if values else None

    return {
        "sent": len(run.outcomes),
        "answered": {str(k): v for k, v in sorted(by_status.items()) if k > 0},
        "lost": lost,
        "unanswered_timeouts": by_status.get(STATUS_TIMEOUT, 0),
        "connection_errors": by_status.get(STATUS_CONNECTION_ERROR, 0),
        "p50_ok_s": pct(ok, 0.50),
        "p99_ok_s": pct(ok, 0.99),
        "max_ok_s": ok[-1] if ok else None,
        "client_lag_p99_s": pct(lags, 0.99),
        "wall_s": run.wall_s,
    }


def write_plot(path: Path, samples: Sequence[Sample], run: RunResult) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(12, 12), sharex=True, layout="constrained")
    seconds = int(run.wall_s) + 1
    kinds: list[tuple[str, Callable[[int], bool]]] = [
        ("200", lambda s: s == 200),
        ("429/503 (shed)", lambda s: s in (429, 503)),
        ("other answers", lambda s: s > 0 and s not in (200, 429, 503)),
        ("lost", lambda s: s <= 0),
    ]
    for label, keep in kinds:
        per_s = np.zeros(seconds)
        for o in run.outcomes:
            if keep(o.status):
                per_s[min(seconds - 1, int(o.t_s))] += 1
        if per_s.any():
            axes[0].plot(np.arange(seconds), per_s, label=label, linewidth=0.8)
    axes[0].set_ylabel("requests / s")
    axes[0].legend(loc="upper right")
    resident = [(s.t_s, s.metrics["loaded_models"]) for s in run.samples
                if "loaded_models" in s.metrics]  # fmt: skip
    if resident:
        axes[1].plot(*zip(*resident, strict=True), linewidth=1)
    axes[1].set_ylabel("resident models")
    axes[1].grid(alpha=0.3)
    t = [s.t_s for s in samples]
    for ax, values, label in (
        (axes[2], [s.rss_bytes / 2**20 for s in samples], "RSS (MiB)"),
        (axes[3], [s.fds for s in samples], "open files"),
        (axes[4], [s.threads for s in samples], "threads"),
    ):
        ax.plot(t, values, linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[4].set_xlabel("seconds into the soak")
    fig.suptitle("tenantserve soak: traffic, memory, files and threads")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any], curve_list: Sequence[Curve]) -> str:
    cfg, req = report["config"], report["requests"]
    answered = ", ".join(f"{k}: {v}" for k, v in req["answered"].items())
    rows = [
        "# Soak",
        "",
        f"`{' '.join(cfg['argv']) or '(defaults)'}` on {cfg['machine']}: {cfg['models']} models "
        f"of {cfg['model_kb']} kB, budget {cfg['budget_bytes'] / 2**20:.1f} MiB (a quarter of "
        f"the fleet at {cfg['model_bytes'] / 1024:.0f} KiB resident each), capacity "
        f"{report['capacity_rps']:.0f} req/s (closed loop, {CAPACITY_CLIENTS} clients), soak "
        f"at {cfg['rate_x']:g}x = {cfg['rate_rps']:.0f} req/s for {cfg['duration_s']:g} s.",
        "",
        "| requests sent | answered (by status) | lost | p50 ok | p99 ok | client lag p99 |",
        "|---:|---|---:|---:|---:|---:|",
        f"| {req['sent']} | {answered} | {req['lost']} | {_ms(req['p50_ok_s'])} | "
        f"{_ms(req['p99_ok_s'])} | {_ms(req['client_lag_p99_s'])} |",
        "",
        "| curve | first window | last window | min | max | slope / min (after first window) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c in curve_list:
        rows.append(
            f"| {c.name} ({c.unit}) | {c.first:.1f} | {c.last:.1f} | {c.low:.1f} | {c.high:.1f} "
            f"| {c.slope_per_min:+.2f} |"
        )
    server = report["server"]
    cpu = [s["cpu_s"] for s in report["server_samples"] if s["cpu_s"] is not None]
    wall = req["wall_s"]
    if len(cpu) > 1 and wall:
        rows += [
            "",
            f"CPU over the soak: server {(cpu[-1] - cpu[0]) / wall:.2f} cores, load generator "
            f"{report['client_cpu_s'] / wall:.2f} cores (they share the machine).",
        ]
    rows += [
        "",
        f"Windows are {curve_list[0].window_s:.0f} s. Server at the end: "
        f"{server.get('tenantserve_loaded_models', 0):.0f} models resident, "
        f"{server.get('tenantserve_model_loading_seconds_count', 0):.0f} loads, "
        f"{server.get('tenantserve_model_evictions_total', 0):.0f} evictions, "
        f"{server.get('tenantserve_rejected_requests_total', 0):.0f} rejected ("
        + ", ".join(
            f"{k.removeprefix('rejected:')} {v:.0f}"
            for k, v in sorted(server.items())
            if k.startswith("rejected:") and v
        )
        + "). Lost = sent and never answered (timed out or connection failed); the goal is 0.",
    ]
    ok_rps = req["answered"].get("200", 0) / wall if wall else 0.0
    rows += [
        "",
        f"Goodput: {ok_rps:.0f} answered 200 per second during the soak, "
        f"{ok_rps / report['capacity_rps']:.2f}x the capacity measured before it "
        f"({report['capacity_rps']:.0f} req/s).",
    ]
    return "\n".join(rows) + "\n"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _progress_every(seconds: float) -> Callable[[float, int, int], None]:
    """A loadgen progress callback that prints a line to stderr every ``seconds``."""
    last = [0.0]

    def show(elapsed: float, answered: int, errors: int) -> None:
        if elapsed - last[0] >= seconds:
            last[0] = elapsed
            print(f"  {elapsed:6.0f} s: {answered} answered, {errors} not 200", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--rate-x", type=float, default=2.0, help="multiple of capacity")
    parser.add_argument("--model-kb", type=int, default=16, help="weights per model")
    parser.add_argument("--capacity-s", type=float, default=5.0)
    parser.add_argument(
        "--budget", help="memory budget (e.g. 256MiB); default: a quarter of the fleet"
    )
    parser.add_argument(
        "--max-connections", type=int, default=MAX_CONNECTIONS,
        help="client connections at most (default above what the server admits and queues)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "soak")
    args = parser.parse_args(argv)
    if args.models < PROBE_MODELS or args.duration_s <= 0 or args.rate_x <= 0:
        parser.error(f"need --models >= {PROBE_MODELS}, --duration-s > 0 and --rate-x > 0")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="tenantserve-soak-") as tmp:
        work = Path(tmp)
        print(f"writing {args.models} models ...", file=sys.stderr)
        ids = write_fleet(
            work / "store", models=args.models, size_bytes=args.model_kb * 1000, seed=SEED,
            tenants=max(1, args.models // 4),
        )  # fmt: skip
        per_model = model_bytes(work / "store", ids, work)
        budget = parse_size(args.budget) if args.budget else per_model * args.models // 4
        with served_tenantserve(
            work / "store", budget=str(budget), log_path=out / "server.log",
            cache_dir=work / "cache",
        ) as served:  # fmt: skip
            print("measuring capacity ...", file=sys.stderr)
            capacity = closed_loop_capacity(served, ids, args.capacity_s)
            rate = args.rate_x * capacity
            trace = generate("zipf", ids, rate=rate, duration_s=args.duration_s, seed=SEED)
            spec = LoadSpec(
                served.url, duration_s=args.duration_s, timeout_s=REQUEST_TIMEOUT_S,
                max_connections=args.max_connections, drain_s=DRAIN_S,
            )  # fmt: skip
            print(f"soak: {rate:.0f} req/s for {args.duration_s:g} s ...", file=sys.stderr)
            sampler = ProcessSampler(served.pid)
            sampler.start()
            try:
                run = replay(
                    trace, spec, label="soak", server_pid=served.pid,
                    progress=_progress_every(10.0),
                )  # fmt: skip
            finally:
                sampler.stop()
            server = server_metrics(served.url)

    curve_list = curves(sampler.samples)
    report: dict[str, Any] = {
        "config": {
            "argv": list(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "models": args.models,
            "model_kb": args.model_kb,
            "model_bytes": per_model,
            "budget_bytes": budget,
            "rate_x": args.rate_x,
            "rate_rps": rate,
            "duration_s": args.duration_s,
            "max_connections": args.max_connections,
        },
        "capacity_rps": capacity,
        "requests": request_summary(run),
        "curves": [asdict(c) for c in curve_list],
        "server": server,
        "samples": [asdict(s) for s in sampler.samples],
        # Once a second from /metrics during the soak: residency, loads, evictions, rejections.
        "server_samples": [{"t_s": s.t_s, "cpu_s": s.cpu_s, **s.metrics} for s in run.samples],
        "client_cpu_s": run.client_cpu_s,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    write_plot(out / "soak.png", sampler.samples, run)
    text = markdown(report, curve_list)
    (out / "report.md").write_text(text)
    print(text)
    return 0 if report["requests"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
