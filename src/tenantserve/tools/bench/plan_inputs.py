"""What ``plan`` and ``replay`` read: sizes, instance types, the fleet profile and the trace;
and the one-line answer to an ordinary mistake in any of them."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from tenantserve.errors import TenantServeError
from tenantserve.units import parse_size

if TYPE_CHECKING:
    from tenantserve.tools.bench.plan import FleetProfile, InstanceType


class Mistake(Exception):
    """An ordinary mistake in the command line or its files: one line on stderr, exit 2."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """As ``serve`` does: ``error: <what is wrong and what to do>`` on stderr, exit 2."""
    try:
        yield
    except FileNotFoundError as exc:
        _fail(f"{exc.filename}: no such file")
    except (Mistake, ValueError, OSError, TenantServeError) as exc:
        _fail(str(exc))


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def parse_instance(text: str) -> InstanceType:
    """``8GiB:2`` → 8 GiB of memory and 2 cores.

    Raises:
        ValueError: not MEMORY:CORES with a positive size and core count.
    """
    from tenantserve.tools.bench.plan import InstanceType

    memory, _, cores = text.partition(":")
    try:
        kind = InstanceType(parse_size(memory), int(cores or "1"), text)
    except ValueError:
        kind = None
    if kind is None or kind.memory_bytes <= 0 or kind.cores <= 0:
        raise ValueError(f"--instance {text!r}: write MEMORY:CORES, e.g. 8GiB:2")
    return kind


def size(option: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise Mistake(f"{option}: {exc}") from None


def read_profile(
    store: str | None, profile: Path | None, save: Path | None, *, busy_s: float = 0.0
) -> FleetProfile:
    """The profile in ``profile``, or measured on ``store``: its models one at a time, then,
    for ``busy_s`` seconds, the loads of a real server under traffic (see
    :mod:`~tenantserve.tools.bench.load_hold`)."""
    from tenantserve.tools.bench.load_hold import CLIENTS, measure_load_hold
    from tenantserve.tools.bench.plan import FleetProfile, profile_store

    if profile is not None:
        if not profile.is_file():
            raise Mistake(f"--profile {profile}: no such file; write one with "
                          "tenantserve plan --store STORE --save-profile FILE")  # fmt: skip
        return FleetProfile.load(profile)
    if store is None:
        raise Mistake("give --store STORE to measure the fleet, or --profile FILE to reuse one")
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="tenantserve-plan-") as tmp:
        with console.status(f"measuring models in {store}"):
            result = profile_store(store, cache_dir=Path(tmp) / "profile")
        if busy_s > 0:
            with console.status(
                f"measuring loads in a server on {store} under {CLIENTS} clients for {busy_s:g} s"
            ):
                try:
                    hold = measure_load_hold(
                        store, result.models, work_dir=Path(tmp) / "busy", duration_s=busy_s
                    )
                except RuntimeError as exc:  # the server did not start: its log's last line
                    said = [line for line in str(exc).splitlines() if line.strip()]
                    raise Mistake(
                        f"--busy-s: a server on {store} did not start ({said[-1][:200]}); "
                        "give --busy-s 0 to skip measuring loads under traffic"
                    ) from None
            result = dataclasses.replace(result, load_hold=hold.factor)
    if save is not None:
        result.save(save)
    return result


def read_trace(
    trace: Path | None, kind: str, fleet: FleetProfile, rate: float, duration_s: float,
    seed: int,
) -> list[tuple[float, str]]:  # fmt: skip
    from tenantserve.tools.bench.traces import generate, load_trace

    if trace is not None and not trace.is_file():
        raise Mistake(f"--trace {trace}: no such file")
    if trace is None and (rate <= 0 or duration_s <= 0):
        raise Mistake("--rate and --duration-s must be above 0")
    ids = sorted(fleet.models)
    made = (
        load_trace(trace)
        if trace is not None
        else generate(kind, ids, rate=rate, duration_s=duration_s, seed=seed)
    )
    requests = [(r.t_s, r.model_id) for r in made]
    if not requests:
        raise Mistake("the trace has no requests; give a longer --duration-s or a higher --rate")
    unknown = sorted({m for _, m in requests} - set(fleet.models))
    if unknown:
        raise Mistake(
            f"the trace names {len(unknown)} model{'s' if len(unknown) > 1 else ''} not in the "
            f"profile, e.g. {unknown[0]}; profile a store that holds them, or drop them from "
            "the trace"
        )
    return requests
