"""``tenantserve serve``: arguments → Settings → build_app → uvicorn."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tenantserve import __version__
from tenantserve.bench.cli import bench_app
from tenantserve.bench.plan_cli import plan_command, replay_command
from tenantserve.fleet.cli import fleet_app
from tenantserve.integrations.ray_cli import ray_app  # imports Ray only when run
from tenantserve.remote.cli import models_app, status_command

app = typer.Typer(
    help="tenantserve: thousands of per-tenant models behind one endpoint, loaded on first "
    "call and kept within a memory budget.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings wrap to the terminal, not to the source's lines
)
app.add_typer(fleet_app, name="fleet")
app.add_typer(ray_app, name="ray")
app.add_typer(bench_app, name="bench")
app.command("plan")(plan_command)
app.command("replay")(replay_command)
app.command("status")(status_command)
app.add_typer(models_app, name="models")

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
    store_retry_deadline: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}STORE_RETRY_DEADLINE_S",
            help="Seconds a store read retries 5xx, SlowDown, resets and stalls, with backoff, "
            "before the load fails with 503 (default 20).",
        ),
    ] = None,
    store_read_timeout: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}STORE_READ_TIMEOUT_S",
            help="Seconds an S3 read may go without a byte before it is cut and retried "
            "(default 10).",
        ),
    ] = None,
    store_verify_etag: Annotated[
        bool | None,
        typer.Option(
            "--store-verify-etag/--no-store-verify-etag",
            envvar=f"{_ENV}STORE_VERIFY_ETAG",
            help="Refuse a downloaded object whose MD5 differs from its ETag (default on); "
            "turn off for SSE-KMS or SSE-C buckets, whose ETags are not MD5s.",
        ),
    ] = None,
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
    ] = 1.0,
    max_body: Annotated[
        str, typer.Option(envvar=f"{_ENV}MAX_BODY", help="Largest request body accepted.")
    ] = "6MiB",
    log_level: Annotated[
        str, typer.Option(envvar=f"{_ENV}LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    api_keys: Annotated[
        Path | None,
        typer.Option(
            envvar=f"{_ENV}API_KEYS",
            help="JSON or TOML file of API keys, each scoped to model-id prefixes ('acme/*') "
            "and roles (invoke, manage, metrics); see docs/isolation.md. Clients send "
            "'Authorization: Bearer <key>' or 'X-Api-Key'; boto3 signs with the key's AWS "
            "pair. Required unless bound to loopback. Inline JSON: TENANTSERVE_API_KEYS_JSON.",
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            envvar=f"{_ENV}INSECURE_NO_AUTH",
            help="Serve a non-loopback address without keys: anyone who reaches the port may "
            "call and manage every model.",
        ),
    ] = False,
    protect_metrics: Annotated[
        bool,
        typer.Option(
            envvar=f"{_ENV}PROTECT_METRICS",
            help="/metrics needs a key with the 'metrics' role (open by default).",
        ),
    ] = False,
    tenant_limits: Annotated[
        Path | None,
        typer.Option(
            envvar=f"{_ENV}TENANT_LIMITS",
            help="JSON or TOML file of per-tenant quotas: [default] and [tenants.<name>] "
            "tables of rate_per_s, burst, max_concurrent, max_memory_fraction, "
            "max_memory_bytes. Over a quota a tenant gets 429 with Retry-After.",
        ),
    ] = None,
    tenant_rate: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}TENANT_RATE_PER_S",
            help="Default requests per second per tenant (token bucket; 0: no limit).",
        ),
    ] = None,
    tenant_burst: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}TENANT_BURST",
            help="Default requests a tenant may send at once above its rate (bucket size).",
        ),
    ] = None,
    tenant_concurrency: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}TENANT_MAX_CONCURRENT",
            help="Default requests one tenant may have in flight (0: no cap of its own).",
        ),
    ] = None,
    tenant_memory_fraction: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}MAX_TENANT_MEMORY_FRACTION",
            help="Share of the memory budget one tenant's models may hold (default 1: all); "
            "a tenant at its share evicts its own models first.",
        ),
    ] = None,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}MAX_IN_FLIGHT",
            help="Requests admitted at once (default 256); the rest queue, served in fair "
            "turns between tenants.",
        ),
    ] = None,
    queue_timeout: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}QUEUE_TIMEOUT_S",
            help="Seconds a request may wait in queues in all (default 5); past it it is "
            "dropped before it runs, with 503 and Retry-After.",
        ),
    ] = None,
    max_queued_loads: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}MAX_QUEUED_LOADS",
            help="Distinct models that may wait to load (default 32); first calls past it get "
            "a fast 503 (OIP) or 429 (SageMaker) with Retry-After.",
        ),
    ] = None,
    max_loads_per_s: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}MAX_LOADS_PER_S",
            help="Model loads started per second at most (default 0: no pacing), so a storm of "
            "first calls cannot take the CPU that warm traffic needs.",
        ),
    ] = None,
    top_tenants: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}TOP_TENANTS",
            help="Tenants by traffic named in metric labels (default 10); the rest are 'other'.",
        ),
    ] = None,
    top_models: Annotated[
        int | None,
        typer.Option(
            envvar=f"{_ENV}TOP_MODELS",
            help="Models by traffic named in per-model metric labels (default 10); the rest "
            "are 'other'.",
        ),
    ] = None,
    predict_timeout_s: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}PREDICT_TIMEOUT_S",
            help="Seconds one prediction may run (default 60); past it the caller gets 504 "
            "(SageMaker: ModelError) and the run is stopped.",
        ),
    ] = None,
    shutdown_grace_s: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}SHUTDOWN_GRACE_S",
            help="Seconds from SIGTERM to exit at most (default 30): requests in flight "
            "finish, then models unload. Keep it within the orchestrator's kill timeout.",
        ),
    ] = None,
    shutdown_drain_s: Annotated[
        float | None,
        typer.Option(
            envvar=f"{_ENV}SHUTDOWN_DRAIN_S",
            help="Seconds after SIGTERM, within the grace period, that new connections are "
            "still taken while readiness says 503, so a load balancer stops routing here "
            "first (default 0).",
        ),
    ] = None,
) -> None:
    """Start the server. Models load on their first request; Ctrl-C stops it cleanly."""
    import prometheus_client
    from pydantic import ValidationError

    from tenantserve.app import build_app, run_server
    from tenantserve.config import Settings
    from tenantserve.logging import configure
    from tenantserve.protocols.http_protocol import BoundedHttpToolsProtocol

    values: dict[str, object] = {
        "store": store,
        "memory_budget": memory_budget,
        "host": host,
        "port": port,
        "preload": tuple(preload or ()),
        "pin": tuple(pin or ()),
        "disk_cache": disk_cache,
        "max_concurrent_loads": max_concurrent_loads,
        "eviction": eviction,
        "min_residency_s": min_residency,
        "max_body": max_body,
        "log_level": log_level,
    }
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    if threads is not None:
        values["threads"] = threads
    values["insecure_no_auth"] = insecure_no_auth
    values["protect_metrics"] = protect_metrics
    optional = {
        "api_keys": api_keys, "tenant_limits": tenant_limits, "tenant_rate_per_s": tenant_rate,
        "tenant_burst": tenant_burst, "tenant_max_concurrent": tenant_concurrency,
        "tenant_max_memory_fraction": tenant_memory_fraction, "max_in_flight": max_in_flight,
        "queue_timeout_s": queue_timeout, "max_queued_loads": max_queued_loads,
        "max_loads_per_s": max_loads_per_s, "top_tenants": top_tenants, "top_models": top_models,
        "predict_timeout_s": predict_timeout_s, "shutdown_grace_s": shutdown_grace_s,
        "shutdown_drain_s": shutdown_drain_s,
        "store_retry_deadline_s": store_retry_deadline, "store_read_timeout_s": store_read_timeout,
        "store_verify_etag": store_verify_etag,
    }  # fmt: skip
    values.update({name: value for name, value in optional.items() if value is not None})
    try:
        settings = Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(f"error: {field}: {message}" if field else f"error: {message}", err=True)
        raise typer.Exit(2) from None
    configure(settings.log_level)
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
        http=BoundedHttpToolsProtocol,  # httptools, with the request head bounded
        log_config=None,
        access_log=False,
    )


def main() -> None:
    app()
