"""``tenantserve ray deploy``: the server as replicas on Ray Serve; Ray is imported when run."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Annotated, Protocol

import typer

from tenantserve.config import Settings

SERVE_PORT = 8000
"""Serve's HTTP port unless ``--port`` or ``TENANTSERVE_PORT`` says otherwise."""


class WithSettings(Protocol):
    """How the CLI gives a command one option per setting (``tenantserve.cli``, a layer up,
    owns that, so the CLI hands it in)."""

    def __call__(
        self,
        command: Callable[..., None],
        *,
        defaults: Mapping[str, object] | None = None,
        shown: Mapping[str, str] | None = None,
        panel: str | None = None,
    ) -> Callable[..., None]: ...


def build_ray_app(with_settings: WithSettings) -> typer.Typer:
    """``tenantserve ray``: ``deploy`` takes Ray's options and every server setting."""
    app = typer.Typer(
        help="Run tenantserve as replicas on Ray Serve, routed by model (needs tenantserve[ray]).",
        no_args_is_help=True,
        rich_markup_mode=None,  # plain help, as every command (cli/__init__.py says why)
    )
    app.callback()(_ray)
    app.command("deploy")(
        with_settings(
            deploy,
            # --host/--port are where Serve's proxy listens: the address clients reach, so
            # the server's rule (keys off loopback) applies to it.
            defaults={"port": SERVE_PORT},
            shown={"threads": "one per --replica-cpus, rounded up"},
            panel="Server settings (each replica's; as for tenantserve serve)",
        )
    )
    return app


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


def deploy(
    settings: Settings,
    *,
    min_copies: Annotated[
        list[str] | None,
        typer.Option(
            help="MODEL_ID=N: N replicas load and pin this model at start (repeatable).",
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
    haproxy: Annotated[
        bool,
        typer.Option(
            help="Serve's HAProxy ingress instead of its Python proxy (a local cluster): "
            "far less CPU a request, but no routing by model (each replica loads what "
            "it is sent)."
        ),
    ] = False,
) -> None:
    """Deploy replicas of the server on Ray Serve and serve until Ctrl-C.

    Every replica runs the same service, cache and protocols (OIP v2 and SageMaker) with its
    own memory budget; Serve's proxy sends each request to a replica that holds its model
    (with --haproxy, Serve's HAProxy balances requests without regard to their model).
    Server settings are the options and variables of `tenantserve serve`; each applies per
    replica, and `--host`/`--port` are where Serve's proxy listens.
    """
    try:
        from tenantserve.integrations import ray_serve
    except ModuleNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    if "threads" not in settings.model_fields_set:
        # Each replica gets its own CPUs from Ray: one thread per reserved CPU.
        settings = settings.model_copy(update={"threads": max(1, math.ceil(replica_cpus))})
    options = ray_serve.RayOptions(
        address=address,
        num_cpus=num_cpus,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests,
        max_ongoing_requests=max_ongoing_requests,
        replica_cpus=replica_cpus,
        http_host=settings.host,
        http_port=settings.port,
        min_copies=parse_copies(min_copies or []),
        dashboard=dashboard,
        dashboard_host=dashboard_host,
        haproxy=haproxy,
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
