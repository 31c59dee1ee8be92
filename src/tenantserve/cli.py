"""``tenantserve serve``: arguments → Settings → build_app → uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tenantserve import __version__
from tenantserve.bench.plan_cli import plan_command, replay_command
from tenantserve.fleet.cli import fleet_app

app = typer.Typer(
    help="tenantserve: thousands of per-tenant models behind one endpoint, loaded on first "
    "call and kept within a memory budget.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings wrap to the terminal, not to the source's lines
)
app.add_typer(fleet_app, name="fleet")
app.command("plan")(plan_command)
app.command("replay")(replay_command)

_ENV = "TENANTSERVE_"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tenantserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Serve per-tenant models over the KServe v2 and SageMaker APIs."""


@app.command()
def serve(
    store: Annotated[
        str,
        typer.Option(
            envvar=f"{_ENV}STORE",
            help="Model store: a local folder or an fsspec URL such as s3://bucket/prefix. "
            "A model id is an artifact's path under it, e.g. acme/macros.",
        ),
    ] = "./models",
    memory_budget: Annotated[
        str,
        typer.Option(
            envvar=f"{_ENV}MEMORY_BUDGET",
            help="Bytes resident models may hold in all, measured at load (4GiB, 512MiB, …). "
            "Least recently used models are evicted to stay within it.",
        ),
    ] = "4GiB",
    host: Annotated[
        str, typer.Option(envvar=f"{_ENV}HOST", help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=f"{_ENV}PORT", help="TCP port.")] = 8080,
    preload: Annotated[
        list[str] | None,
        typer.Option(
            envvar=f"{_ENV}PRELOAD",
            help="Model id to load at start-up (repeatable; a pattern such as 'acme/*' works).",
        ),
    ] = None,
    pin: Annotated[
        list[str] | None,
        typer.Option(
            envvar=f"{_ENV}PIN",
            help="Model id to load at start-up and never evict (repeatable; patterns work).",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(envvar=f"{_ENV}CACHE_DIR", help="Local copy of remote artifacts."),
    ] = None,
    disk_cache: Annotated[
        str,
        typer.Option(envvar=f"{_ENV}DISK_CACHE", help="Bytes the local copy may take."),
    ] = "20GiB",
    threads: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}THREADS",
            help="Threads that run predictions (default: one per core). Fixed, whatever the "
            "number of models.",
        ),
    ] = None,
    max_concurrent_loads: Annotated[
        int, typer.Option(envvar=f"{_ENV}MAX_CONCURRENT_LOADS", help="Model loads at once.")
    ] = 2,
    eviction: Annotated[
        str,
        typer.Option(
            envvar=f"{_ENV}EVICTION",
            help="Which model leaves when memory is full: 'lru' (least recently used) or "
            "'cost' (cheapest to reload per byte and least used; GDSF).",
        ),
    ] = "lru",
    min_residency: Annotated[
        float,
        typer.Option(
            envvar=f"{_ENV}MIN_RESIDENCY_S",
            help="With --eviction cost: seconds a new model is protected from eviction.",
        ),
    ] = 5.0,
    max_body: Annotated[
        str, typer.Option(envvar=f"{_ENV}MAX_BODY", help="Largest request body accepted.")
    ] = "6MiB",
    log_level: Annotated[
        str, typer.Option(envvar=f"{_ENV}LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
) -> None:
    """Start the server. Models load on their first request; Ctrl-C stops it cleanly."""
    import prometheus_client
    import uvicorn
    from pydantic import ValidationError

    from tenantserve.app import build_app
    from tenantserve.config import Settings
    from tenantserve.logging import configure

    values: dict[str, object] = {
        "store": store,
        "memory_budget_bytes": memory_budget,
        "host": host,
        "port": port,
        "preload": tuple(preload or ()),
        "pin": tuple(pin or ()),
        "disk_cache_bytes": disk_cache,
        "max_concurrent_loads": max_concurrent_loads,
        "eviction": eviction,
        "min_residency_s": min_residency,
        "max_body_bytes": max_body,
        "log_level": log_level,
    }
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    if threads is not None:
        values["threads"] = threads
    try:
        settings = Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            typer.echo(f"error: {field}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    configure(settings.log_level)
    # One process, one server: `_created` series double every counter's scrape for no use here.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def main() -> None:
    app()
