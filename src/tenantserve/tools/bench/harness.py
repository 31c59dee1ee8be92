"""Measured runs against running servers: warm-up, the wrk check, and replays taken in turns.

On a shared, noisy box a figure is only worth its ratio to a baseline measured under the same
noise. So servers under comparison stay up together and the replay is cut into ``rounds``
slices taken in turn (floor, tenantserve, floor, tenantserve, ...), then joined per server;
the wrk check likewise alternates wrk and the load generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from tenantserve.tools.bench import loadgen
from tenantserve.tools.bench.loadgen import LoadSpec
from tenantserve.tools.bench.results import RunResult, join_runs
from tenantserve.tools.bench.traces import Trace, TraceRequest
from tenantserve.tools.bench.wrk import WrkCheck, WrkResult, run_wrk, wrk_available


@dataclass(frozen=True)
class Target:
    """A running server under test: a label for the report, its URL and its pid."""

    label: str
    url: str
    pid: int | None


def popularity_order(trace: Trace) -> list[str]:
    """Model ids from least to most requested: a warm-up in this order leaves the hot ones in."""
    counts = trace.counts()
    return sorted(counts, key=lambda m: (counts[m], m))


def warm(console: Console, target: Target, model_ids: list[str], *, body: bytes | None) -> None:
    """Call every model once before timing, so first-run allocations stay out of the figures."""
    with console.status(f"{target.label}: warming up {len(model_ids)} models"):
        failures = loadgen.warm_up(target.url, model_ids, body=body)
    if failures:
        console.print(f"[yellow]{target.label}: {failures} warm-up calls failed[/]")


def check_against_wrk(
    console: Console,
    target: Target,
    model_id: str,
    *,
    concurrency: int,
    duration_s: float,
    rounds: int = 2,
    body: bytes | None = None,
) -> WrkCheck | None:
    """wrk and the load generator in turn (wrk first and last), closed loop on one warm model.

    ``None`` when wrk is not installed.
    """
    if not wrk_available():
        console.print("[yellow]wrk not found (apt-get install wrk): skipping the client check[/]")
        return None
    payload = body or loadgen.default_body()
    one = Trace((TraceRequest(0.0, model_id),), f"one model ({model_id})")
    spec = LoadSpec(target.url, concurrency=concurrency, duration_s=duration_s)
    theirs: list[WrkResult] = []
    mine: list[RunResult] = []

    def wrk() -> None:
        theirs.append(
            run_wrk(
                target.url, [model_id], body=payload, concurrency=concurrency, duration_s=duration_s
            )
        )

    with console.status(f"{target.label}: wrk vs the load generator, {concurrency} connections"):
        wrk()
        for _ in range(rounds):
            mine.append(loadgen.replay(one, spec, label="client-check", body=payload))
            wrk()
    ok = [sum(o.status == 200 for o in r.outcomes) for r in mine]
    check = WrkCheck(
        server=target.label,
        model_id=model_id,
        concurrency=concurrency,
        duration_s=duration_s,
        wrk_rps=tuple(w.rate for w in theirs),
        loadgen_rps=tuple(answered / r.wall_s for answered, r in zip(ok, mine, strict=True)),
        wrk_cpu_us=1e6
        * sum(w.cpu_s or 0.0 for w in theirs)
        / max(1, sum(w.requests for w in theirs)),
        loadgen_cpu_us=1e6 * sum(r.client_cpu_s for r in mine) / max(1, sum(ok)),
    )
    console.print(
        f"{target.label}: wrk {_each(check.wrk_rps)} req/s, load generator "
        f"{_each(check.loadgen_rps)} req/s ({check.ratio:.2f}x wrk, medians); client CPU per "
        f"request: wrk {check.wrk_cpu_us:.0f} us, load generator {check.loadgen_cpu_us:.0f} us"
    )
    return check


def interleave(
    console: Console,
    targets: Sequence[Target],
    trace: Trace,
    spec: LoadSpec,
    *,
    rounds: int = 1,
    body: bytes | None = None,
    resident: Iterable[str] = (),
) -> list[RunResult]:
    """Replay ``trace`` against every target, in ``rounds`` slices taken in turn; join them.

    ``spec`` gives the mode and the whole run's bounds (its URL is replaced by each target's).
    Open loop, slice ``k`` replays the trace's ``k``-th time window; closed loop, each slice
    continues the trace where that target's previous slice stopped.
    """
    if rounds < 1:
        raise ValueError("rounds must be at least 1")
    slice_s = spec.duration_s / rounds
    parts: dict[str, list[RunResult]] = {t.label: [] for t in targets}
    resident_ids = list(resident)
    for k in range(rounds):
        for target in targets:
            done = parts[target.label]
            left = None
            if spec.max_requests is not None:  # an equal share per slice, as time is shared
                share = -(-spec.max_requests // rounds)
                left = min(share, spec.max_requests - sum(len(r.outcomes) for r in done))
                if left <= 0:
                    continue
            part = trace
            if spec.concurrency is None:
                part = trace.between(k * slice_s, (k + 1) * slice_s)
                if not len(part):
                    continue
            sliced = dataclasses.replace(
                spec,
                url=target.url,
                duration_s=slice_s,
                max_requests=left,
                start_request=done[-1].next_request if done else spec.start_request,
            )
            name = target.label if rounds == 1 else f"{target.label} [{k + 1}/{rounds}]"
            with _progress_bar(console, name, slice_s) as tick:
                result = loadgen.replay(
                    part,
                    sliced,
                    label=target.label,
                    body=body,
                    server_pid=target.pid,
                    resident=resident_ids,
                    progress=tick,
                )
            done.append(result)
    return [join_runs(parts[t.label]) for t in targets if parts[t.label]]


def _each(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


@contextlib.contextmanager
def _progress_bar(console: Console, label: str, duration_s: float) -> Iterator[loadgen.Progress]:
    # Refreshed twice a second from the replay's own loop: cheap next to the load it measures.
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, auto_refresh=False) as bar:
        task = bar.add_task(label, total=duration_s, status="")

        def tick(elapsed_s: float, answered: int, errors: int) -> None:
            rate = answered / elapsed_s if elapsed_s > 0 else 0.0
            status = f"{answered} answered, {errors} errors, {rate:.0f} req/s"
            bar.update(task, completed=min(elapsed_s, duration_s), status=status)
            bar.refresh()

        yield tick
