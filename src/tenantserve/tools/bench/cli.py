"""``tenantserve bench run | floor | trace | suite``: load a server with a trace and report it."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

bench_app = typer.Typer(
    help="Benchmarks on loopback: replay a request trace (Zipf, churn, bursts, diurnal, a "
    "one-tenant flood, or a file) against tenantserve and against a raw floor server, and "
    "report throughput, warm/cold latency, hit ratio, memory and threads as JSON, Markdown "
    "and PNG plots.",
    no_args_is_help=True,
)

_KINDS_HELP = "zipf, uniform, shifting, bursts, diurnal or flood"
_MB = 1_000_000


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _params(pairs: list[str] | None, zipf_s: float | None) -> dict[str, object]:
    """``key=value`` trace parameters, numbers read as numbers."""
    params: dict[str, object] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise _fail(f"--param takes key=value, got {pair!r}")
        value: object = raw
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                value = kind(raw)
                break
        params[key] = value
    if zipf_s is not None:
        params["s"] = zipf_s
    return params


@bench_app.command()
def run(
    url: Annotated[
        str | None,
        typer.Option(help="A server already running on loopback (http://127.0.0.1:PORT)."),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            help="Local model store. Without --url, the bench starts `tenantserve serve` on it "
            "(and the floor, with --floor); with --models, a synthetic fleet is written into it "
            "first if it holds no models."
        ),
    ] = None,
    floor: Annotated[
        bool,
        typer.Option(
            help="Also run the raw floor server on --store with the same trace; every "
            "figure is then stated as a ratio of the floor's."
        ),
    ] = False,
    trace: Annotated[
        str, typer.Option(help=f"Trace kind ({_KINDS_HELP}) or a .jsonl/.csv trace file.")
    ] = "zipf",
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="Trace parameter key=value (repeatable), e.g. share=0.6, phases=3, "
            "tenant=tenant-007, period_s=5; see `tenantserve bench trace --help`."
        ),
    ] = None,
    zipf_s: Annotated[
        float | None, typer.Option(help="Zipf exponent s (default 1.1) for kinds that use it.")
    ] = None,
    models: Annotated[
        int | None, typer.Option(help="Synthetic models to write into an empty --store.")
    ] = None,
    size_mb: Annotated[float, typer.Option(help="Weight megabytes per synthetic model.")] = 10.0,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Open loop: requests per second, sent at the trace's times whatever "
            "the server's pace. With --concurrency, only shapes the trace (default 1000)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Closed loop: this many connections, each sending its next request "
            "when the last is answered (cycling through the trace)."
        ),
    ] = None,
    duration_s: Annotated[float, typer.Option(help="Length of the measured run.")] = 30.0,
    max_requests: Annotated[int | None, typer.Option(help="Stop after this many.")] = None,
    budget: Annotated[
        str, typer.Option(help="--memory-budget of the tenantserve the bench starts.")
    ] = "4GiB",
    server_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra argument for the tenantserve the bench starts (repeatable), "
            "e.g. --server-arg=--eviction --server-arg=cost."
        ),
    ] = None,
    server_pid: Annotated[
        int | None, typer.Option(help="Pid of the --url server (default: found from its port).")
    ] = None,
    payload: Annotated[
        Path | None,
        typer.Option(help="OIP v2 infer JSON body to send (default: input FP32 [1, 16])."),
    ] = None,
    warmup: Annotated[bool, typer.Option(help="Call every model once before timing.")] = True,
    rounds: Annotated[
        int,
        typer.Option(
            help="Cut the run into this many slices, taken in turn with the floor's "
            "(floor, tenantserve, floor, ...), so both see the same machine noise."
        ),
    ] = 3,
    wrk_check_s: Annotated[
        float, typer.Option(help="Seconds per wrk-vs-load-generator check (0: skip).")
    ] = 8.0,
    timeout_s: Annotated[float, typer.Option(help="Per-request timeout.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of the trace and the synthetic fleet.")] = 0,
    out: Annotated[Path, typer.Option(help="Folder for report.md/json, CSVs and plots.")] = Path(
        "bench-out"
    ),
    plots: Annotated[bool, typer.Option(help="Write PNG plots (needs matplotlib).")] = True,
) -> None:
    """Replay a trace against a server and write a report (loopback only)."""
    from tenantserve.tools.bench.loadgen import check_loopback
    from tenantserve.tools.bench.runner import RunConfig, run_bench

    if url is None and store is None:
        raise _fail("give --url (a running server) or --store (the bench starts one)")
    if url is not None:
        try:
            check_loopback(url)
        except ValueError as exc:
            raise _fail(str(exc)) from None
    if floor and store is None:
        raise _fail("--floor needs --store: the floor loads its models from a local folder")
    if rate is None and concurrency is None:
        raise _fail("give --rate (open loop) or --concurrency (closed loop)")
    config = RunConfig(
        url=url,
        store=store,
        floor=floor,
        trace=trace,
        trace_params=_params(param, zipf_s),
        models=models,
        size_bytes=int(size_mb * _MB),
        rate=rate,
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
        budget=budget,
        server_args=tuple(server_arg or ()),
        server_pid=server_pid,
        body=payload.read_bytes() if payload is not None else None,
        warmup=warmup,
        wrk_check_s=wrk_check_s,
        timeout_s=timeout_s,
        seed=seed,
        out_dir=out,
        plots=plots,
        command="tenantserve bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        rounds=rounds,
    )
    try:
        text = run_bench(config, console=Console(stderr=True))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(text)


@bench_app.command("floor")
def floor_command(
    store: Annotated[Path, typer.Option(help="Local model store: every <id>/model.onnx.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8090,
    threads: Annotated[
        int | None, typer.Option(help="Inference threads (default: one per core).")
    ] = None,
) -> None:
    """Run the raw floor server: every session preloaded, OIP v2 infer only, no cache logic."""
    from tenantserve.tools.bench.floor import serve_floor

    try:
        serve_floor(store, host=host, port=port, threads=threads)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@bench_app.command("trace")
def trace_command(
    kind: Annotated[str, typer.Argument(help=f"Trace kind: {_KINDS_HELP}.")],
    out: Annotated[Path, typer.Option(help="File to write: .csv, else JSON lines.")],
    store: Annotated[
        Path | None, typer.Option(help="Take model ids from this local store.")
    ] = None,
    models: Annotated[
        int, typer.Option(help="Without --store: ids tenant-000/model-0000 ... (as fleet synth).")
    ] = 200,
    rate: Annotated[float, typer.Option(help="Mean requests per second.")] = 100.0,
    duration_s: Annotated[float, typer.Option(help="Trace length.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same trace.")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="key=value (repeatable). zipf: s. shifting: s, every. bursts: s, period_s, "
            "burst_s, factor, burst_models. diurnal: s, phases, amplitude. flood: s, tenant, "
            "share, start_frac, end_frac."
        ),
    ] = None,
) -> None:
    """Write a generated trace to a file (for `bench run --trace FILE`, replay or planning)."""
    from tenantserve.tools.bench import traces
    from tenantserve.tools.bench.floor import local_model_ids

    ids = (
        local_model_ids(store)
        if store is not None
        else [f"tenant-{i:03d}/model-{i:04d}" for i in range(models)]
    )
    try:
        made = traces.generate(
            kind, ids, rate=rate, duration_s=duration_s, seed=seed, **_params(param, None)
        )
    except ValueError as exc:
        raise _fail(str(exc)) from None
    traces.save_trace(out, made)
    top = made.counts().most_common(5)
    share = sum(n for _, n in top) / max(1, len(made))
    typer.echo(
        f"{out}: {len(made)} requests, {len(made.counts())} models "
        f"(top 5 take {share:.0%}); {made.description}"
    )


@bench_app.command("suite")
def suite_command(
    out: Annotated[Path, typer.Option(help="Folder for the reports.")] = Path("benchmarks/out"),
    store: Annotated[
        Path | None, typer.Option(help="Fleet folder, reused across runs (default: OUT/store).")
    ] = None,
    models: Annotated[int, typer.Option(help="Synthetic models in the fleet.")] = 200,
    size_mb: Annotated[float, typer.Option(help="Weight megabytes per model.")] = 10.0,
    zipf_s: Annotated[float, typer.Option(help="Zipf exponent of the trace.")] = 1.1,
    concurrency: Annotated[int, typer.Option(help="Closed-loop connections.")] = 16,
    duration_s: Annotated[float, typer.Option(help="Seconds per measured run.")] = 60.0,
    wrk_check_s: Annotated[float, typer.Option(help="Seconds per wrk check (0: skip).")] = 5.0,
    rounds: Annotated[int, typer.Option(help="Slices per server, taken in turn.")] = 3,
    eviction: Annotated[
        list[str] | None,
        typer.Option(
            help="Eviction policy of the quarter-budget run (repeatable; default: the "
            "server's, adaptive-cost; any of serve --eviction's)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of fleet and trace.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write PNG plots.")] = True,
) -> None:
    """The reference run (issue 4): floor vs tenantserve all resident vs a quarter budget."""
    from tenantserve.tools.bench.suite import SuiteConfig, run_suite

    config = SuiteConfig(
        out_dir=out,
        store=store or out / "store",
        models=models,
        size_bytes=int(size_mb * _MB),
        zipf_s=zipf_s,
        concurrency=concurrency,
        duration_s=duration_s,
        wrk_check_s=wrk_check_s,
        rounds=rounds,
        evictions=tuple(eviction or ("adaptive-cost",)),
        seed=seed,
        plots=plots,
    )
    typer.echo(run_suite(config, console=Console(stderr=True)))
