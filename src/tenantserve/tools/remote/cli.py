"""``tenantserve status``, ``models list|load|unload|pin|unpin|promote`` and ``tenants list``
against a running server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console, RenderableType

from tenantserve.tools.remote.render import (
    index_table,
    models_table,
    status_view,
    tenants_table,
)
from tenantserve.types import DEFAULT_ALIAS
from tenantserve.units import human_bytes

if TYPE_CHECKING:
    from tenantserve.tools.remote.client import StatusClient

# httpx is imported when a command runs: `tenantserve serve` and `--help` need none of it.
DEFAULT_URL = "http://127.0.0.1:8080"

UrlOpt = Annotated[
    str,
    typer.Option(
        "--url", envvar="TENANTSERVE_URL", help="The server's address.", show_default=True
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TENANTSERVE_API_KEY",
        help="API key, sent as 'Authorization: Bearer <key>' (needs the manage role).",
        show_default=False,
    ),
]
ModelArg = Annotated[str, typer.Argument(help="Model id, e.g. acme/macros.", show_default=False)]

models_app = typer.Typer(
    help="Resident models of a running server: list them, load, unload, pin, unpin and "
    "promote a version.",
    no_args_is_help=True,
)
tenants_app = typer.Typer(
    help="Tenants of a running server: what each holds, has sent and may do.",
    no_args_is_help=True,
)


@contextmanager
def _client(url: str, api_key: str | None) -> Iterator[StatusClient]:
    """A client whose failures end the command with one clear line and exit code 1."""
    from tenantserve.tools.remote.client import RemoteError, StatusClient

    try:
        with StatusClient(url, api_key=api_key) as client:
            yield client
    except RemoteError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def status_command(
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Redraw every --interval seconds until Ctrl-C.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between redraws with --watch.")] = 2.0,
    count: Annotated[
        int, typer.Option(help="With --watch: stop after this many redraws (0: never).")
    ] = 0,
    models: Annotated[int, typer.Option(help="Resident models listed at most.")] = 20,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw /v1/status document.")
    ] = False,
) -> None:
    """What a running server holds: memory budget, resident models, hit ratio, latency,
    recent loads, evictions and rejections, hottest tenants and models."""
    console = Console()
    with _client(url, api_key) as client:
        if as_json:
            typer.echo(orjson.dumps(client.status(), option=orjson.OPT_INDENT_2).decode())
            return
        if not watch:
            console.print(status_view(client.status(), url=client.url, limit=models))
            return
        _watch(console, lambda: status_view(client.status(), url=client.url, limit=models),
               interval, count)  # fmt: skip


def _watch(
    console: Console, draw: Callable[[], RenderableType], interval: float, count: int
) -> None:
    from rich.live import Live

    drawn = 0
    with Live(console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                live.update(draw(), refresh=True)
                drawn += 1
                if count and drawn >= count:
                    return
                time.sleep(max(0.1, interval))
        except KeyboardInterrupt:
            return


@models_app.command("list")
def list_models(
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Every model in the store, resident or not.")
    ] = False,
) -> None:
    """Resident models, most recently used first (--all: the whole store)."""
    console = Console()
    with _client(url, api_key) as client:
        if not all_models:
            console.print(models_table(client.status()))
            return
        console.print(index_table(client.index()))


@models_app.command("load")
def load_model(
    model_id: ModelArg,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    pin: Annotated[bool, typer.Option(help="Also pin it: never evicted.")] = False,
) -> None:
    """Load a model now. Without --pin a resident one is reloaded from the store: the old
    copy serves until the new one is in, and keeps serving if the reload fails."""
    with _client(url, api_key) as client:
        if pin:
            client.pin(model_id)
        else:
            client.load(model_id)
        _echo_model(client, model_id, "pinned and loaded" if pin else "loaded")


@models_app.command("unload")
def unload_model(model_id: ModelArg, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Unload a model once its requests in flight finish (a pin is dropped with it)."""
    with _client(url, api_key) as client:
        client.unload(model_id)
        typer.echo(f"unloaded {model_id}")


@models_app.command("pin")
def pin_model(model_id: ModelArg, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Pin a model: load it if needed and never evict it."""
    with _client(url, api_key) as client:
        client.pin(model_id)
        _echo_model(client, model_id, "pinned")


@models_app.command("unpin")
def unpin_model(model_id: ModelArg, url: UrlOpt = DEFAULT_URL, api_key: KeyOpt = None) -> None:
    """Unpin a resident model: it may be evicted again when memory is needed."""
    with _client(url, api_key) as client:
        client.pin(model_id, pinned=False)
        typer.echo(f"unpinned {model_id}")


def _echo_model(client: StatusClient, model_id: str, done: str) -> None:
    doc = client.status()
    resident = next((m for m in doc["models"] if m["id"] == model_id), None)
    size = f" ({human_bytes(resident['bytes'])})" if resident else ""
    typer.echo(f"{done} {model_id}{size}")


@models_app.command("promote")
def promote_model(
    model_id: ModelArg,
    version: Annotated[
        int,
        typer.Argument(help="The version to promote: its folder's number.", show_default=False),
    ],
    alias: Annotated[
        str,
        typer.Option(
            help=f"The alias to move. Bare ids follow '{DEFAULT_ALIAS}' (the highest version "
            "when unset)."
        ),
    ] = DEFAULT_ALIAS,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    """Roll a versioned model (acme/macros/1/, acme/macros/2/, …) out: load VERSION, then
    point ALIAS at it. Requests resolved before finish on the old version; requests pinned
    to a version (acme/macros@1, /versions/1) keep it. Lasts until the server restarts:
    aliases.json in the model's folder keeps it for good (docs/versions.md)."""
    if version < 1:
        typer.echo("error: VERSION is a whole number from 1", err=True)
        raise typer.Exit(2)
    with _client(url, api_key) as client:
        doc = client.promote(model_id, version, alias)
        typer.echo(f"{model_id}@{doc['alias']} is version {doc['version']} ({doc['id']})")


@tenants_app.command("list")
def list_tenants(
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the raw /v1/tenants document.")
    ] = False,
) -> None:
    """Every tenant that holds a model, sent a request or has limits of its own: models and
    memory held (of its cap), requests in flight, requests, errors and refusals since start,
    last use, rate and concurrency limits."""
    with _client(url, api_key) as client:
        doc = client.tenants()
        if as_json:
            typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        Console().print(tenants_table(doc, now_s=time.time()))
