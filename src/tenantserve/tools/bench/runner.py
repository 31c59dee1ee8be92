"""One ``bench run``: fleet, trace, the servers in turn (floor first), and the written report."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console

from tenantserve.tools.bench import harness, traces
from tenantserve.tools.bench.floor import local_model_ids
from tenantserve.tools.bench.loadgen import LoadSpec
from tenantserve.tools.bench.report import write_report
from tenantserve.tools.bench.sampler import find_pid
from tenantserve.tools.bench.servers import served_floor, served_tenantserve
from tenantserve.tools.bench.wrk import WrkCheck

CLOSED_LOOP_TRACE_RATE = 1000.0
"""Rate a closed-loop trace is generated at when none is given: it only sets its length."""


@dataclass(frozen=True)
class RunConfig:
    """What ``tenantserve bench run`` was asked to do (see its ``--help``)."""

    url: str | None
    store: Path | None
    floor: bool
    trace: str
    trace_params: dict[str, object]
    models: int | None
    size_bytes: int
    rate: float | None
    concurrency: int | None
    duration_s: float
    max_requests: int | None
    budget: str
    server_args: tuple[str, ...]
    server_pid: int | None
    body: bytes | None
    warmup: bool
    wrk_check_s: float
    timeout_s: float
    seed: int
    out_dir: Path
    plots: bool
    command: str
    rounds: int = 3


def resolve_trace(config: RunConfig) -> traces.Trace:
    """The trace file named by ``config.trace``, or one generated over the store's models."""
    if config.trace not in traces.KINDS:
        path = Path(config.trace)
        if not path.is_file():
            raise ValueError(f"--trace is neither a kind ({', '.join(traces.KINDS)}) nor a file")
        return traces.load_trace(path)
    if config.store is not None:
        ids = local_model_ids(config.store)
    else:
        ids = server_model_ids(str(config.url))
    if not ids:
        raise ValueError("no models to call: the store is empty (try --models N)")
    return traces.generate(
        config.trace,
        ids,
        rate=config.rate or CLOSED_LOOP_TRACE_RATE,
        duration_s=config.duration_s,
        seed=config.seed,
        **config.trace_params,
    )


def server_model_ids(url: str) -> list[str]:
    """Model ids a running tenantserve lists in its repository index."""
    response = httpx.post(f"{url}/v2/repository/index", json={}, timeout=30)
    response.raise_for_status()
    return sorted(str(entry["name"]) for entry in response.json())


def run_bench(config: RunConfig, *, console: Console) -> str:
    """Do the whole run; write the report into ``config.out_dir``; return its Markdown."""
    store = config.store
    if store is not None and config.models and not local_model_ids(store):
        from tenantserve.tools.fleet.synth import write_fleet

        with console.status(f"writing {config.models} synthetic models into {store}"):
            write_fleet(store, models=config.models, size_bytes=config.size_bytes, seed=config.seed)
    trace = resolve_trace(config)
    console.print(f"trace: {trace.description} ({len(trace)} requests)")
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    order = harness.popularity_order(trace)
    spec = LoadSpec(
        "",  # each target's URL replaces it
        concurrency=config.concurrency,
        duration_s=config.duration_s,
        max_requests=config.max_requests,
        timeout_s=config.timeout_s,
    )
    with contextlib.ExitStack() as servers:
        targets = []
        if config.floor and store is not None:
            console.print("starting the floor server (it creates every session first)")
            floor = servers.enter_context(served_floor(store, log_path=out / "floor.log"))
            targets.append(harness.Target("floor", floor.url, floor.pid))
        if config.url is not None:
            pid = config.server_pid or find_pid(config.url)
            targets.append(harness.Target("server", config.url, pid))
        elif store is not None:
            served = servers.enter_context(
                served_tenantserve(
                    store,
                    budget=config.budget,
                    log_path=out / "tenantserve.log",
                    cache_dir=out / "cache",
                    extra_args=config.server_args,
                )
            )
            targets.append(harness.Target("tenantserve", served.url, served.pid))
        for target in targets if config.warmup else ():
            harness.warm(console, target, order, body=config.body)
        checks: list[WrkCheck] = []
        for target in targets if config.wrk_check_s else ():
            check = harness.check_against_wrk(
                console,
                target,
                order[-1],
                concurrency=config.concurrency or 16,
                duration_s=config.wrk_check_s,
                body=config.body,
            )
            checks.extend([check] if check is not None else [])
        results = harness.interleave(
            console,
            targets,
            trace,
            spec,
            rounds=config.rounds,
            body=config.body,
            # Without the server's cache header, warmed-up models count as resident.
            resident=order if config.warmup else (),
        )
    text = write_report(
        out,
        results,
        floor_label="floor" if config.floor else None,
        wrk_checks=checks,
        notes=[f"Command: `{config.command}`", "", f"Trace: {trace.description}."],
        plots=config.plots,
    )
    console.print(f"report written to {out}/")
    return text
