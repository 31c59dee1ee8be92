"""``tenantserve serve``: options and ``TENANTSERVE_*`` variables → Settings → app → uvicorn."""

from __future__ import annotations

import typer

from tenantserve.config import Settings


def serve_command(settings: Settings) -> None:
    """Start the server. Models load on their first request; Ctrl-C stops it cleanly.

    Every option is also a variable, named in its help; an option given wins over its variable.
    """
    import prometheus_client

    from tenantserve.app import build_app, preflight, run_server
    from tenantserve.errors import StoreUnavailable, TenantServeError
    from tenantserve.logging import configure
    from tenantserve.protocols.http_protocol import bounded_httptools
    from tenantserve.protocols.shedding import Shedder

    configure(settings.log_level)
    try:
        # Before listening: a store that cannot be used or a pin that names nothing is a
        # start-up error, not a server that says "ready" and answers every call 404.
        for warning in preflight(settings):
            typer.echo(f"warning: {warning}", err=True)
    except ValueError as exc:  # an unreadable or malformed key or limits file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except StoreUnavailable as exc:
        typer.echo(f"error: --store {settings.store}: {exc.for_operator()}", err=True)
        raise typer.Exit(2) from None
    except TenantServeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # One process, one server: `_created` series double every counter's scrape for no use here.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        served = build_app(settings)
    except ValueError as exc:  # an unreadable or malformed key or limits file
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    run_server(
        served,
        drain_s=settings.shutdown_drain_s,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, with the request head bounded, the body timed, the connections capped.
        http=bounded_httptools(
            body_timeout_s=settings.body_timeout_s,
            max_connections=settings.max_connections,
            shed=Shedder(served.state.service, served.state.metrics, served.state.access),
        ),
        log_config=None,
        access_log=False,
        # No X-Forwarded-For rewriting: nothing here reads the client's address, and the
        # middleware would cost every request.
        proxy_headers=False,
    )
