"""Issue 4's reference run: the floor, then tenantserve all resident and at a quarter budget.

One Zipf trace over a synthetic fleet, replayed closed loop against each server in turn, with
issue 4's targets checked against the floor's figures.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tenantserve.tools.bench import harness, trace_kinds
from tenantserve.tools.bench.floor import local_model_ids
from tenantserve.tools.bench.loadgen import LoadSpec
from tenantserve.tools.bench.report import write_report
from tenantserve.tools.bench.sampler import read_metrics
from tenantserve.tools.bench.servers import Served, served_floor, served_tenantserve
from tenantserve.tools.bench.summary import Summary, summarize

TRACE_RATE = 4000.0
"""Rate the closed-loop trace is generated at: long enough that it rarely has to cycle."""
_MARKER = ".bench-fleet.json"  # a dot-name: never listed as a model


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes and durations of the reference run (see ``tenantserve bench suite --help``)."""

    out_dir: Path
    store: Path
    models: int = 200
    size_bytes: int = 10_000_000
    zipf_s: float = 1.1
    concurrency: int = 16
    duration_s: float = 60.0
    wrk_check_s: float = 5.0
    rounds: int = 3
    evictions: tuple[str, ...] = ("adaptive-cost",)
    seed: int = 0
    plots: bool = True


def ensure_fleet(
    store: Path, *, models: int, size_bytes: int, seed: int, console: Console
) -> list[str]:
    """The suite's synthetic fleet in ``store``: reused when it matches, else (re)written.

    Only a folder the suite wrote itself (it holds the marker file) is ever replaced.
    """
    wanted = {"models": models, "size_bytes": size_bytes, "seed": seed}
    marker = store / _MARKER
    if marker.is_file():
        if json.loads(marker.read_text()) == wanted and len(local_model_ids(store)) == models:
            return local_model_ids(store)
        shutil.rmtree(store)
    elif store.exists() and any(store.iterdir()):
        raise ValueError(f"{store} holds files the suite did not write; pick another --store")
    from tenantserve.tools.fleet.synth import write_fleet

    with console.status(f"writing {models} synthetic models of {size_bytes / 1e6:g} MB"):
        ids = write_fleet(store, models=models, size_bytes=size_bytes, seed=seed)
    marker.write_text(json.dumps(wanted))
    return sorted(ids)


def run_suite(config: SuiteConfig, *, console: Console) -> str:
    """Run the floor and tenantserve on the same trace; write the report; return its Markdown."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ids = ensure_fleet(
        config.store,
        models=config.models,
        size_bytes=config.size_bytes,
        seed=config.seed,
        console=console,
    )
    trace = trace_kinds.zipf(
        ids, rate=TRACE_RATE, duration_s=config.duration_s, seed=config.seed, s=config.zipf_s
    )
    order = harness.popularity_order(trace)
    fleet_bytes = sum((config.store / m / "model.onnx").stat().st_size for m in ids)
    budget_all = 4 * fleet_bytes  # nothing is evicted
    with contextlib.ExitStack() as servers:
        # Every server stays up for the whole run, so the slices can be taken in turn.
        console.print("floor: creating every session before the port opens")
        floor = _start(servers, "floor", served_floor(config.store, log_path=out / "floor.log"))
        everything = _start(
            servers,
            "tenantserve-all",
            served_tenantserve(
                config.store,
                budget=str(budget_all),
                log_path=out / "all.log",
                cache_dir=out / "cache",
            ),
        )
        for target in (floor, everything):
            harness.warm(console, target, order, body=None)
        # "A quarter of the fleet" in the bytes the cache counts: what all models hold loaded.
        used = _metric(everything.url, "memory_used_bytes")
        budget_quarter = int(used) // 4 or fleet_bytes // 2
        quarters = []
        for policy in config.evictions:
            target = _start(
                servers,
                f"tenantserve-quarter-{policy}",
                served_tenantserve(
                    config.store,
                    budget=str(budget_quarter),
                    log_path=out / f"quarter-{policy}.log",
                    cache_dir=out / "cache",
                    extra_args=("--eviction", policy),
                ),
            )
            harness.warm(console, target, order, body=None)
            quarters.append(target)
        checks = []
        for target in (floor, everything) if config.wrk_check_s else ():
            check = harness.check_against_wrk(
                console,
                target,
                order[-1],
                concurrency=config.concurrency,
                duration_s=config.wrk_check_s,
            )
            checks.extend([check] if check is not None else [])
        spec = LoadSpec("", concurrency=config.concurrency, duration_s=config.duration_s)
        runs = harness.interleave(
            console,
            [floor, everything, *quarters],
            trace,
            spec,
            rounds=config.rounds,
            resident=order,  # the floor's classification: all of its models are loaded
        )

    summaries = {r.label: summarize(r) for r in runs}
    notes = [
        f"{config.models} synthetic ONNX models of {config.size_bytes / 1e6:g} MB "
        f"({fleet_bytes / 2**20:.0f} MiB of files; {used / 2**20:.0f} MiB measured resident), "
        f"trace {trace.description}, replayed closed loop with {config.concurrency} connections "
        f"for {config.duration_s:g} s per server, in {config.rounds} slices taken in turn, after "
        f"a warm-up call to every model (least popular first). Budgets: all resident "
        f"{budget_all / 2**20:.0f} MiB; a quarter {budget_quarter / 2**20:.0f} MiB.",
    ]
    return write_report(
        out,
        runs,
        floor_label="floor",
        wrk_checks=checks,
        notes=notes,
        footer=targets(summaries, config.evictions),
        plots=config.plots,
        title="tenantserve reference run (issue 4)",
    )


def _start(
    servers: contextlib.ExitStack, label: str, server: contextlib.AbstractContextManager[Served]
) -> harness.Target:
    served = servers.enter_context(server)
    return harness.Target(label, served.url, served.pid)


def _metric(url: str, name: str) -> float:
    return read_metrics(url, timeout_s=30).get(name, 0.0)


def targets(summaries: dict[str, Summary], evictions: Sequence[str]) -> list[str]:
    """Issue 4's targets, each with its measured figure and whether it was met."""
    floor = summaries["floor"]
    lines = ["Targets (issue 4):", ""]

    def line(what: str, value: float, limit: float, *, at_least: bool) -> None:
        met = value >= limit if at_least else value <= limit
        sign = ">=" if at_least else "<="
        lines.append(f"- {what}: {value:.2f} ({sign} {limit:g}: {'met' if met else 'NOT met'})")

    every = summaries["tenantserve-all"]
    line("all resident, throughput / floor", _rps(every) / _rps(floor), 0.9, at_least=True)
    line("all resident, p99 / floor p99", _p99(every) / _p99(floor), 1.5, at_least=False)
    for policy in evictions:
        quarter = summaries[f"tenantserve-quarter-{policy}"]
        line(
            f"quarter budget ({policy}), throughput / floor",
            _rps(quarter) / _rps(floor),
            0.7,
            at_least=True,
        )
        max_s = quarter.latency.max_s if quarter.latency else float("inf")
        line(f"quarter budget ({policy}), slowest request (s)", max_s, 1.0, at_least=False)
    lines += ["", "Targets (issue 17, cache starting empty):", ""]
    for policy in evictions:
        quarter = summaries[f"tenantserve-quarter-{policy}"]
        ratio = _rps(quarter) / _rps(floor)
        line(f"quarter budget ({policy}), throughput / floor", ratio, 0.4, at_least=True)
        line(f"quarter budget ({policy}), p99 (ms)", _p99(quarter) * 1e3, 250, at_least=False)
    return lines


def _rps(summary: Summary) -> float:
    return summary.throughput_rps


def _p99(summary: Summary) -> float:
    return summary.latency.p99_s if summary.latency else float("inf")
