"""``tenantserve plan``: capacity questions, answered offline (``replay`` is in replay_cli)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console

from tenantserve.tools.bench.plan_inputs import (
    Mistake,
    one_line_errors,
    read_profile,
    read_trace,
    size,
)
from tenantserve.tools.bench.plan_inputs import (
    parse_instance as parse_instance,
)  # benchmarks/ use it
from tenantserve.tools.bench.traces import KINDS as KINDS  # re-exported: the CLI names them

if TYPE_CHECKING:
    from tenantserve.tools.bench.plan import InstanceType, Prediction

# The planning machinery is imported when a command runs: `tenantserve serve` must not pay
# for (or need) the runtimes and tokenizers it loads. Trace kinds are a light import.

DEFAULT_INSTANCES = ("4GiB:2", "8GiB:2", "8GiB:4", "16GiB:4", "32GiB:8")
PLAN_COLUMNS = ("type", "count", "target", "p50 ms", "p99 ms", "hit ratio", "cold/min",
                "memory", "cores", "req/s", "req/s each", "CPU each", "copies")  # fmt: skip

StoreOpt = Annotated[
    str | None, typer.Option(help="Model store to profile (a sample is loaded and measured).")
]
ProfileOpt = Annotated[
    Path | None, typer.Option(help="A fleet profile saved earlier with --save-profile.")
]
TraceOpt = Annotated[
    Path | None, typer.Option(help="A trace file (CSV or JSONL of t_s,model_id) to replay.")
]
KindOpt = Annotated[str, typer.Option(help=f"Without --trace, generate one: {', '.join(KINDS)}.")]
RateOpt = Annotated[float, typer.Option(help="Generated trace: requests per second.")]
DurationOpt = Annotated[float, typer.Option(help="Generated trace: seconds.")]
SeedOpt = Annotated[int, typer.Option(help="Generated trace: random seed.")]


def plan_command(
    store: StoreOpt = None,
    profile: ProfileOpt = None,
    save_profile: Annotated[
        Path | None, typer.Option(help="Write the measured profile here.")
    ] = None,
    busy_s: Annotated[
        float,
        typer.Option(
            help="With --store: seconds of traffic on a real server on the store (16 clients, "
            "Zipf 1.1 over up to 200 of its models, a quarter of them held) to measure how "
            "long its loads hold their slot when it is busy (10 ms where one alone takes 1). "
            "0 skips it: planned first calls then come out as fast as on an idle server."
        ),
    ] = 10.0,
    trace: TraceOpt = None,
    kind: KindOpt = "zipf",
    rate: RateOpt = 100.0,
    duration_s: DurationOpt = 600.0,
    seed: SeedOpt = 0,
    instance: Annotated[
        list[str] | None,
        typer.Option(
            help="Instance size MEMORY:CORES to compare (repeatable; default "
            f"{', '.join(DEFAULT_INSTANCES)}).",
            show_default=False,
        ),
    ] = None,
    p99_target_ms: Annotated[
        float, typer.Option(help="Latency target for the 99th percentile.")
    ] = 250.0,
    policy: Annotated[
        str, typer.Option(help="Eviction policy, as the server's --eviction names it.")
    ] = "lru",
    overhead: Annotated[
        str, typer.Option(help="Memory per instance not available to models.")
    ] = "512MiB",
    max_ongoing_requests: Annotated[
        int,
        typer.Option(
            help="As tenantserve ray deploy: requests an instance takes at once; when every "
            "instance holding a model has this many, the model spills to another instance."
        ),
    ] = 16,
    max_instances: Annotated[int, typer.Option(help="Most instances the search tries.")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Predict hit ratio, cold starts, p99 and instances needed, per instance size.

    The fleet is measured (or read from --profile) and the trace is served by simulated
    instances: each request is routed as the Ray deployment routes it (to the least busy
    instance holding its model; when all of those are full, to the instance with the most
    free memory, which loads a copy), replayed through that instance's copy of the server's
    cache code, and queued as the server queues it (its handling on the one event loop,
    its inference on a core; a first call after its load, which holds one of the load
    slots as long as --busy-s measured). A hot model thus spreads over instances. For each
    size the count is the fewest instances whose p99 meets the target; when none does, a
    note says why (a target below one request's own service time, loads, a hot model's
    queue) and what to change. Progress goes to stderr.

    Columns (totals for the fleet, then per instance):

    \b
    - type: the instance size, MEMORY:CORES.
    - count: instances of that size; on a miss, where the search stopped.
    - target: met or missed.
    - p50 ms, p99 ms: predicted latency percentiles, loads and queueing
      included.
    - hit ratio: requests whose model was resident on the instance that
      served them.
    - cold/min: model loads per minute, the whole fleet (spilled copies
      included).
    - memory, cores: the fleet's total (count times the size).
    - req/s: requests per second, the whole fleet.
    - req/s each: per instance, mean / busiest instance.
    - CPU each: share of an instance's cores busy with requests and loads,
      mean / busiest.
    - copies: instances that loaded the most requested model.
    """
    with one_line_errors():
        from tenantserve.tools.bench.plan import plan

        overhead_bytes = size("--overhead", overhead)
        types = [parse_instance(text) for text in (instance or DEFAULT_INSTANCES)]
        _check_plan_options(types, overhead_bytes, policy, p99_target_ms, max_ongoing_requests,
                            max_instances)  # fmt: skip
        if busy_s < 0:
            raise Mistake("--busy-s must be 0 or more")
        fleet = read_profile(store, profile, save_profile, busy_s=busy_s)
        requests = read_trace(trace, kind, fleet, rate, duration_s, seed)
        with _Progress(len(requests)) as progress:
            rows = plan(
                requests, fleet, types, p99_target_s=p99_target_ms / 1000,
                max_instances=max_instances, on_run=progress.on_run, policy=policy,
                overhead_bytes=overhead_bytes, max_ongoing=max_ongoing_requests,
            )  # fmt: skip
    if as_json:
        typer.echo(orjson.dumps([dataclasses.asdict(row) for row in rows]).decode())
        return
    from tenantserve.tools.bench.tables import show_records

    title = (f"{len(requests):,} requests over {len(fleet.models):,} models, p99 target "
             f"{p99_target_ms:g} ms, {policy} eviction")  # fmt: skip
    cells = [_plan_cells(row, kind_) for row, kind_ in zip(rows, types, strict=True)]
    show_records(Console(), title, PLAN_COLUMNS, cells, [row.reason for row in rows])


def _check_plan_options(
    types: Sequence[InstanceType], overhead_bytes: int, policy: str, p99_target_ms: float,
    max_ongoing: int, max_instances: int,
) -> None:  # fmt: skip
    from tenantserve.cache.policies import NAMES

    if policy not in NAMES:
        raise Mistake(f"--policy {policy!r}: choose one of {', '.join(NAMES)}")
    if p99_target_ms <= 0:
        raise Mistake("--p99-target-ms must be above 0")
    if max_ongoing < 1 or max_instances < 1:
        raise Mistake("--max-ongoing-requests and --max-instances must be at least 1")
    for kind in types:
        if kind.memory_bytes <= overhead_bytes:
            raise Mistake(
                f"--instance {kind.label} has no memory left for models after --overhead "
                f"({overhead_bytes / 1024**2:,.0f} MiB): give a larger instance or a smaller "
                "--overhead"
            )


def _plan_cells(row: Prediction, kind: InstanceType) -> list[str]:
    return [
        row.instance, str(row.instances), "met" if row.meets_target else "missed",
        f"{row.p50_s * 1000:.1f}", f"{row.p99_s * 1000:.1f}", f"{row.hit_ratio:.3f}",
        f"{row.cold_starts_per_min:.1f}", _gib(row.instances * kind.memory_bytes),
        str(row.instances * kind.cores), f"{row.rate_per_s:,.0f}",
        f"{row.rate_per_s / row.instances:,.0f} / {row.busiest_rate_per_s:,.0f}",
        f"{row.cpu_mean:.0%} / {row.cpu_max:.0%}", str(row.hot_model_copies),
    ]  # fmt: skip


def _gib(nbytes: int) -> str:
    return f"{nbytes / 1024**3:,.4g} GiB"


class _Progress:
    """A progress bar on stderr, one simulation at a time; nothing when stderr is no terminal."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._total = total
        console = Console(stderr=True)
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=console, transient=True, disable=not console.is_terminal,
        )  # fmt: skip
        self._task = self._bar.add_task("", total=total)

    def __enter__(self) -> _Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def on_run(self, label: str, count: int) -> Callable[[int], None]:
        self._bar.reset(self._task, description=f"{label} x {count}", total=self._total)
        return lambda done: self._bar.update(self._task, completed=done)
