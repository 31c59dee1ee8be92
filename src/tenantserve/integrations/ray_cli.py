"""``tenantserve ray deploy``: the server as replicas on Ray Serve; Ray is imported when run."""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

ray_app = typer.Typer(
    help="Run tenantserve as replicas on Ray Serve, routed by model (needs tenantserve[ray]).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


_ENV = "TENANTSERVE_"


@ray_app.callback()
def _ray() -> None:
    """Run tenantserve as replicas on Ray Serve, routed by model (needs tenantserve[ray])."""


def parse_copies(specs: list[str]) -> dict[str, int]:
    """``["acme/hot=2"]`` → ``{"acme/hot": 2}``; a bare id means 1 copy."""
    copies: dict[str, int] = {}
    for spec in specs:
        model_id, _, count = spec.rpartition("=") if "=" in spec else (spec, "", "1")
        if not model_id or not count.isdigit() or int(count) < 1:
            raise typer.BadParameter(f"{spec!r}: write MODEL_ID=COPIES, e.g. acme/hot=2")
        copies[model_id] = int(count)
    return copies


@ray_app.command()
def deploy(
    store: Annotated[
        str, typer.Option(envvar=f"{_ENV}STORE", help="Model store: a folder or fsspec URL.")
    ] = "./models",
    memory_budget: Annotated[
        str,
        typer.Option(
            envvar=f"{_ENV}MEMORY_BUDGET", help="Bytes resident models may hold, per replica."
        ),
    ] = "4GiB",
    pin: Annotated[
        list[str] | None,
        typer.Option(envvar=f"{_ENV}PIN", help="Model id every replica loads and never evicts."),
    ] = None,
    min_copies: Annotated[
        list[str] | None,
        typer.Option(
            help="MODEL_ID=N: N replicas load and pin this model at start (repeatable).",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(envvar=f"{_ENV}CACHE_DIR", help="Local copy of remote artifacts."),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}THREADS", help="Prediction threads per replica (default: its CPUs)."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            envvar="RAY_ADDRESS", help="An existing Ray cluster; default: start a local one."
        ),
    ] = None,
    num_cpus: Annotated[
        float | None, typer.Option(help="CPUs of the local cluster (default: all).")
    ] = None,
    replicas: Annotated[int, typer.Option(help="Replicas, when not autoscaling.")] = 2,
    min_replicas: Annotated[
        int | None, typer.Option(help="Autoscale on ongoing requests from this many…")
    ] = None,
    max_replicas: Annotated[int | None, typer.Option(help="…up to this many.")] = None,
    target_ongoing_requests: Annotated[
        float, typer.Option(help="Autoscaling target: ongoing requests per replica.")
    ] = 4.0,
    max_ongoing_requests: Annotated[
        int,
        typer.Option(help="Requests a replica takes at once; past it a hot model spills."),
    ] = 16,
    replica_cpus: Annotated[float, typer.Option(help="CPUs Ray reserves per replica.")] = 1.0,
    host: Annotated[
        str, typer.Option(help="Where Serve's HTTP proxy listens (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Serve's HTTP port.")] = 8000,
    dashboard: Annotated[
        bool,
        typer.Option(help="Start Ray's dashboard and job API with a local cluster."),
    ] = False,
    dashboard_host: Annotated[str, typer.Option(help="Where the dashboard listens.")] = (
        "127.0.0.1"
    ),
    detach: Annotated[
        bool, typer.Option(help="With --address: deploy, then exit and leave it running.")
    ] = False,
) -> None:
    """Deploy replicas of the server on Ray Serve and serve until Ctrl-C.

    Every replica runs the same service, cache and protocols (OIP v2 and SageMaker) with its
    own memory budget; Serve's proxy sends each request to a replica that holds its model.
    Other server settings come from TENANTSERVE_* variables, as for `tenantserve serve`.
    """
    from pydantic import ValidationError

    from tenantserve.config import Settings

    try:
        from tenantserve.integrations import ray_serve
    except ModuleNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    values: dict[str, object] = {
        "store": store,
        "memory_budget": memory_budget,
        "pin": tuple(pin or ()),
        # The proxy's address stands for the server's: keys are required off loopback.
        "host": host,
        "port": port,
        # Each replica gets its own CPUs from Ray; one thread per reserved CPU by default.
        "threads": threads if threads is not None else max(1, math.ceil(replica_cpus)),
    }
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    try:
        settings = Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(f"error: {field}: {message}" if field else f"error: {message}", err=True)
        raise typer.Exit(2) from None
    options = ray_serve.RayOptions(
        address=address,
        num_cpus=num_cpus,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests,
        max_ongoing_requests=max_ongoing_requests,
        replica_cpus=replica_cpus,
        http_host=host,
        http_port=port,
        min_copies=parse_copies(min_copies or []),
        dashboard=dashboard,
        dashboard_host=dashboard_host,
    )
    keep_app = detach and address is not None
    try:
        url = ray_serve.deploy(settings, options)
        typer.echo(f"tenantserve on Ray Serve: {url}")
        if not keep_app:
            typer.echo("Ctrl-C stops it")
            _wait_for_signal()
    finally:
        ray_serve.shutdown(options, keep_app=keep_app)


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM, then put the previous handlers back."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
