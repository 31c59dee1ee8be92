"""``tenantserve replay``: each eviction policy on a trace, or the policy table (``--compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tenantserve.tools.bench.plan_cli import (
    DurationOpt,
    KindOpt,
    ProfileOpt,
    RateOpt,
    SeedOpt,
    StoreOpt,
    TraceOpt,
)
from tenantserve.tools.bench.plan_inputs import (
    Mistake,
    one_line_errors,
    read_profile,
    read_trace,
    size,
)

if TYPE_CHECKING:
    from tenantserve.tools.bench.fleet_profile import FleetProfile

REPLAY_COLUMNS = ("policy", "hit ratio", "loads", "MB loaded", "evictions", "refused")


def replay_command(
    budget: Annotated[
        str | None, typer.Option(help="Memory budget for models (e.g. 2GiB); not with --compare.")
    ] = None,
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
    synthetic: Annotated[
        str | None,
        typer.Option(
            help="Instead of --store or --profile, a made-up fleet N:SMALLEST-LARGEST (e.g. "
            "200:7MB-13MB): N models of sizes drawn from --seed, loads proportional to size."
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Print the policy table instead: hit ratios on three traces (zipf s=1.1, "
            "shifting: its ranking redrawn every 5,000 requests, flat: zipf s=0.8) at 1/8, "
            "1/4 and 1/2 of the fleet's bytes, as Markdown.",
        ),
    ] = False,
) -> None:
    """Replay a trace through the real cache under each policy and Belady's clairvoyant one.

    One cache of --budget bytes sees every request. Columns:

    \b
    - policy: the server's --eviction policies; belady evicts the model
      needed furthest in the future (the best any policy can do).
    - hit ratio: requests whose model was resident.
    - loads: requests that loaded their model; MB loaded: the bytes they
      loaded.
    - evictions: models evicted to make room.
    - refused: requests for a model larger than the whole budget.
    """
    with one_line_errors():
        from tenantserve.tools.bench.replay import POLICIES, replay

        fleet = _replay_fleet(store, profile, synthetic, seed)
        if compare:
            if budget is not None or trace is not None:
                raise Mistake("--compare sets its own budgets and traces: drop --budget, --trace")
            _print_policy_table(fleet, rate, duration_s, seed, min_residency_s)
            return
        if budget is None:
            raise Mistake("give --budget (e.g. 2GiB), or --compare for the policy table")
        budget_bytes = size("--budget", budget)
        if budget_bytes <= 0:
            raise Mistake("--budget must be above 0")
        requests = read_trace(trace, kind, fleet, rate, duration_s, seed)
        sizes = {m: c.resident_bytes for m, c in fleet.models.items()}
        loads = {m: c.load_s for m, c in fleet.models.items()}
        cells = []
        for name in POLICIES:
            result = replay(
                requests, sizes=sizes, budget_bytes=budget_bytes, policy=name,
                load_seconds=loads, min_residency_s=min_residency_s,
            )  # fmt: skip
            cells.append([name, f"{result.hit_ratio:.4f}", f"{result.loads:,}",
                          f"{result.bytes_loaded / 1e6:,.0f}", f"{result.evictions:,}",
                          f"{result.refused:,}"])  # fmt: skip
    from tenantserve.tools.bench.tables import say, show_records

    title = f"{len(requests):,} requests over {len(fleet.models):,} models, budget {budget}"
    console = Console()
    show_records(console, title, REPLAY_COLUMNS, cells)
    too_big = sorted((m for m in {m for _, m in requests} if sizes[m] > budget_bytes),
                     key=lambda m: -sizes[m])  # fmt: skip
    if too_big:
        say(console, f"{len(too_big)} of the models requested are larger than the budget "
                     f"(the largest, {too_big[0]}, holds {sizes[too_big[0]] / 1e6:,.0f} MB): the "
                     "server refuses their requests, counted under refused.")  # fmt: skip


def _replay_fleet(
    store: str | None, profile: Path | None, synthetic: str | None, seed: int
) -> FleetProfile:
    if synthetic is None:
        return read_profile(store, profile, None)
    if store is not None or profile is not None:
        raise Mistake("--synthetic makes up the fleet: drop --store and --profile")
    from tenantserve.tools.bench.policy_table import synthetic_fleet

    count, _, span = synthetic.partition(":")
    smallest, _, largest = span.partition("-")
    if not count.isdigit() or not smallest or not largest:
        raise Mistake(f"--synthetic {synthetic!r}: write N:SMALLEST-LARGEST, e.g. 200:7MB-13MB")
    low, high = size("--synthetic", smallest), size("--synthetic", largest)
    try:
        return synthetic_fleet(int(count), low, high, seed)
    except ValueError as exc:
        raise Mistake(f"--synthetic {synthetic!r}: {exc}") from None


def _print_policy_table(
    fleet: FleetProfile, rate: float, duration_s: float, seed: int, min_residency_s: float
) -> None:
    from tenantserve.config import Settings
    from tenantserve.tools.bench.policy_table import default_matches, hit_ratios, markdown

    default = str(Settings.model_fields["eviction"].default)
    with Console(stderr=True).status("replaying") as status:
        ratios, lengths = hit_ratios(
            fleet, rate=rate, duration_s=duration_s, seed=seed, min_residency_s=min_residency_s,
            on_replay=lambda what: status.update(f"replaying {what}"),
        )  # fmt: skip
    sizes = [c.resident_bytes for c in fleet.models.values()]
    counts = ", ".join(f"{label} {n:,}" for label, n in lengths.items())
    typer.echo(
        f"Hit ratio by policy, trace and budget (a fraction of the fleet's {sum(sizes) / 1e6:,.0f}"
        f" MB; {len(sizes):,} models of {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB). "
        f"Requests: {counts}; seed {seed}.\n"
    )
    typer.echo(markdown(ratios, default), nl=False)
    met = "matches or beats" if default_matches(ratios, default) else "does NOT match"
    typer.echo(f"\nThe default ({default}) {met} the best of the baselines in every column.")
