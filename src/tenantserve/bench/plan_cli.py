"""``tenantserve plan`` and ``replay``: capacity and eviction questions, answered offline."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from tenantserve.bench.traces import KINDS as KINDS  # re-exported: the CLI names them
from tenantserve.units import parse_size

if TYPE_CHECKING:
    from tenantserve.bench.plan import FleetProfile, InstanceType

# The planning machinery is imported when a command runs: `tenantserve serve` must not pay
# for (or need) the runtimes and tokenizers it loads. Trace kinds are a light import.

DEFAULT_INSTANCES = ("4GiB:2", "8GiB:2", "8GiB:4", "16GiB:4", "32GiB:8")

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


def parse_instance(text: str) -> InstanceType:
    """``8GiB:2`` → 8 GiB of memory and 2 cores."""
    from tenantserve.bench.plan import InstanceType

    memory, _, cores = text.partition(":")
    try:
        return InstanceType(parse_size(memory), int(cores or "1"), text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: write MEMORY:CORES, e.g. 8GiB:2 ({exc})") from None


def _profile(store: str | None, profile: Path | None, save: Path | None) -> FleetProfile:
    from tenantserve.bench.plan import FleetProfile, profile_store

    if profile is not None:
        return FleetProfile.load(profile)
    if store is None:
        raise typer.BadParameter("give --store to measure the fleet, or --profile to reuse one")
    with tempfile.TemporaryDirectory(prefix="tenantserve-plan-") as tmp:
        result = profile_store(store, cache_dir=Path(tmp))
    if save is not None:
        result.save(save)
    return result


def _trace(
    trace: Path | None, kind: str, ids: list[str], rate: float, duration_s: float, seed: int
) -> list[tuple[float, str]]:
    from tenantserve.bench.traces import generate, load_trace

    made = (
        load_trace(trace)
        if trace is not None
        else generate(kind, ids, rate=rate, duration_s=duration_s, seed=seed)
    )
    return [(r.t_s, r.model_id) for r in made]


def plan_command(
    store: StoreOpt = None,
    profile: ProfileOpt = None,
    save_profile: Annotated[
        Path | None, typer.Option(help="Write the measured profile here.")
    ] = None,
    trace: TraceOpt = None,
    kind: KindOpt = "zipf",
    rate: RateOpt = 100.0,
    duration_s: DurationOpt = 600.0,
    seed: SeedOpt = 0,
    instance: Annotated[
        list[str] | None,
        typer.Option(
            help="Instance size MEMORY:CORES to compare (repeatable).", show_default=False
        ),
    ] = None,
    p99_target_ms: Annotated[
        float, typer.Option(help="Latency target for the 99th percentile.")
    ] = 250.0,
    policy: Annotated[str, typer.Option(help="Eviction policy: lru or cost.")] = "lru",
    overhead: Annotated[
        str, typer.Option(help="Memory per instance not available to models.")
    ] = "512MiB",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Predict hit ratio, cold starts, p99 and instances needed, per instance size.

    The fleet is measured (or read from --profile), the traffic replayed through the server's
    own cache code on each instance's share of the models (requests routed by model), and each
    share queued on the instance's cores. Compare horizontal (more instances) and vertical
    (bigger instances) options in one table.
    """
    from tenantserve.bench.plan import plan

    fleet = _profile(store, profile, save_profile)
    requests = _trace(trace, kind, sorted(fleet.models), rate, duration_s, seed)
    unknown = {m for _, m in requests} - set(fleet.models)
    if unknown:
        raise typer.BadParameter(f"the trace names models not in the fleet: {sorted(unknown)[:3]}")
    types = [parse_instance(text) for text in (instance or DEFAULT_INSTANCES)]
    rows = plan(
        requests, fleet, types, p99_target_s=p99_target_ms / 1000, policy=policy,
        overhead_bytes=parse_size(overhead),
    )  # fmt: skip
    if as_json:
        typer.echo(orjson.dumps([dataclasses.asdict(row) for row in rows]).decode())
        return
    table = Table(title=f"{len(requests)} requests over {len(fleet.models)} models, "
                  f"p99 target {p99_target_ms:g} ms, {policy} eviction")  # fmt: skip
    for column in ("type", "count", "hit ratio", "cold/min", "p50 ms", "p99 ms", "memory",
                   "cores"):  # fmt: skip
        table.add_column(column, justify="right", no_wrap=True)
    for row, kind_ in zip(rows, types, strict=True):
        mark = "" if row.meets_target else " (misses target)"
        table.add_row(
            row.instance, f"{row.instances}{mark}", f"{row.hit_ratio:.3f}",
            f"{row.cold_starts_per_min:.1f}", f"{row.p50_s * 1000:.1f}",
            f"{row.p99_s * 1000:.1f}",
            _gib(row.instances * kind_.memory_bytes),
            str(row.instances * kind_.cores),
        )  # fmt: skip
    Console().print(table)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 1024**3:.3g} GiB"


def replay_command(
    budget: Annotated[str, typer.Option(help="Memory budget for models (e.g. 2GiB).")],
    store: StoreOpt = None,
    profile: ProfileOpt = None,
    trace: TraceOpt = None,
    kind: KindOpt = "zipf",
    rate: RateOpt = 100.0,
    duration_s: DurationOpt = 600.0,
    seed: SeedOpt = 0,
    min_residency_s: Annotated[
        float, typer.Option(help="Cost policy's protection age (the server's default).")
    ] = 1.0,
) -> None:
    """Replay a trace through the real cache under each policy and Belady's clairvoyant one."""
    from tenantserve.bench.replay import POLICIES, replay

    fleet = _profile(store, profile, None)
    requests = _trace(trace, kind, sorted(fleet.models), rate, duration_s, seed)
    sizes = {m: c.resident_bytes for m, c in fleet.models.items()}
    loads = {m: c.load_s for m, c in fleet.models.items()}
    table = Table(title=f"{len(requests)} requests, budget {budget}")
    for column in ("policy", "hit ratio", "loads", "MB loaded", "evictions"):
        table.add_column(column, justify="right")
    for name in POLICIES:
        result = replay(
            requests, sizes=sizes, budget_bytes=parse_size(budget), policy=name,
            load_seconds=loads, min_residency_s=min_residency_s,
        )  # fmt: skip
        table.add_row(name, f"{result.hit_ratio:.4f}", str(result.loads),
                      f"{result.bytes_loaded / 1e6:.0f}", str(result.evictions))  # fmt: skip
    Console().print(table)
