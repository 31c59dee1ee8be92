"""Composition root: build_app(settings) wires store → cache → scheduling → service → routes."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from difflib import get_close_matches
from types import FrameType
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from tenantserve.activity import Activity
from tenantserve.cache import Loader, LoadQueue, MemoryBudget, ModelCache
from tenantserve.cache.policies import make_policy
from tenantserve.config import Settings
from tenantserve.errors import StoreUnavailable
from tenantserve.metrics import Metrics
from tenantserve.protocols import routes, server_version
from tenantserve.protocols.auth import Access
from tenantserve.protocols.endpoint import FrontDoor
from tenantserve.protocols.grpc.server import GrpcServer
from tenantserve.protocols.keys import KeyRing
from tenantserve.protocols.origin_guard import OriginGuard
from tenantserve.runtimes import default_runtimes
from tenantserve.scheduling.admission import Admission
from tenantserve.scheduling.codel import CoDel
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits, TenantQuotas
from tenantserve.service import InferenceService
from tenantserve.store import DiskCache, ModelStore, open_store
from tenantserve.store.patterns import resolve_patterns

log = logging.getLogger("tenantserve")

# Of the shutdown grace period, the part kept for unloading models after HTTP requests have
# had theirs (at most _CLOSE_RESERVE_MAX_S).
_CLOSE_RESERVE_FRACTION = 0.2
_CLOSE_RESERVE_MAX_S = 5.0
# How often a store that failed its check is tried again (readiness turns true when it passes).
_STORE_RECHECK_S = 2.0


def build_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> Starlette:
    """The ASGI app for ``settings``. Nothing starts until the app's lifespan runs.

    Raises:
        ValueError: an API key or tenant limits file that cannot be read or is malformed.
    """
    keys = _keys(settings)
    limits = _limits(settings)
    metrics = Metrics(registry, top_tenants=settings.top_tenants)
    activity = Activity(registry=metrics.registry, model_label_top_k=settings.top_models)
    # One bounded disk tier: artifact copies and the ORT-format files made from them.
    disk_cache = DiskCache(settings.cache_dir, max_bytes=settings.disk_cache)
    store = _open_store(settings, disk_cache)
    executor = BoundedExecutor(
        compute_threads=settings.threads,
        load_threads=settings.max_concurrent_loads,
        io_threads=settings.max_concurrent_loads * 2,
        # As many spares as workers: predicts past their timeout whose threads have not
        # returned yet do not take threads from other models, up to that many at once.
        spare_compute_threads=settings.threads,
        background_nice=settings.load_nice,
    )
    budget = _budget(settings, limits)
    cache = ModelCache(
        loader=Loader(
            store=store,
            runtimes=default_runtimes(disk_cache, prepack=settings.prepack),
            budget=budget,
            metrics=metrics,
            io_executor=executor.io,
            load_executor=executor.load,
            trimmer_nice=settings.load_nice,
        ),
        queue=LoadQueue(
            metrics=metrics,
            max_concurrent_loads=settings.max_concurrent_loads,
            max_queued_loads=settings.max_queued_loads,
            max_loads_per_s=settings.max_loads_per_s,
            failed_load_ttl_s=settings.failed_load_ttl_s,
            # Loads queue for slots in arrival order: a judge of their own, on their own scale.
            judge=CoDel(target_s=settings.load_target_s) if settings.load_target_s else None,
        ),
        budget=budget,
        metrics=metrics,
        policy=make_policy(settings.eviction, min_residency_s=settings.min_residency_s),
        load_wait_s=settings.load_wait_s,
        events=activity.cache_event,
    )
    metrics.watch_cache(cache.snapshot)
    # One judge of overload for both queues a request meets: admission, then the predictors.
    codel = CoDel(target_s=settings.queue_target_s) if settings.queue_target_s else None
    admission = Admission(
        max_in_flight=settings.max_in_flight,
        max_queued=settings.max_in_flight * 4,
        queue_timeout_s=settings.queue_timeout_s,
        metrics=metrics,
        codel=codel,
    )
    service = InferenceService(
        cache=cache,
        store=store,
        admission=admission,
        executor=executor,
        metrics=metrics,
        predictor=FairExecutor(
            executor.compute,
            workers=settings.threads,
            spare_workers=settings.threads,
            metrics=metrics,
            codel=codel,
        ),
        quotas=TenantQuotas(limits, metrics=metrics),
        activity=activity,
        predict_timeout_s=settings.predict_timeout_s,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_s=settings.max_batch_delay_ms / 1000,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    metrics.watch_scheduling(service.scheduling)
    grpc: GrpcServer | None = None
    if settings.grpc_port is not None:
        grpc = GrpcServer(
            service, metrics, access=Access(keys, max_body_bytes=settings.max_body),
            host=settings.host, port=settings.grpc_port, max_body_bytes=settings.max_body,
            version=server_version(),
        )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.store_problem = await _store_problem(store, executor)
        watcher = None
        if service.store_problem is not None:
            # Not ready, and why in /v1/status; resident models (none yet) would still answer.
            log.error("model store %s cannot be used: %s", store.url, service.store_problem)
            watcher = asyncio.create_task(_watch_store(service, store, executor))
        await cache.start()
        await service.preload(settings.pin, pin=True, what="--pin")
        await service.preload(settings.preload)
        # What start-up built (modules, runtimes, preloaded models) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it, and a
        # request's tail no longer pays for it.
        gc.freeze()
        service.start()
        if keys is None:
            log.warning(
                "authentication is OFF: anyone who can reach %s:%d may call and manage every "
                "model; give --api-keys FILE to require keys", settings.host, settings.port,
            )  # fmt: skip
        log.info(
            "serving store %s with a %d-byte memory budget", store.url,
            settings.memory_budget,
        )  # fmt: skip
        try:
            if grpc is not None:
                await grpc.start()
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            if grpc is not None:  # calls in flight get the grace period, less the reserve
                reserve_s = min(
                    _CLOSE_RESERVE_MAX_S, _CLOSE_RESERVE_FRACTION * settings.shutdown_grace_s
                )
                await grpc.stop(service.shutdown_left_s() - reserve_s)
            await service.close()  # within the grace period, whatever still runs

    # Keys off on loopback: this machine's clients only, never a web page it has open
    # (--insecure-no-auth waives keys for everyone, and with them this guard).
    guard_hosts = settings.allowed_hosts if keys is None and not settings.insecure_no_auth else None
    access = Access(keys, max_body_bytes=settings.max_body)
    app = _App(
        service=service,
        guard_hosts=guard_hosts,
        routes=routes(
            service,
            metrics,
            max_body_bytes=settings.max_body,
            store_url=store.url,
            access=access,
            open_metrics=settings.open_metrics,
            default_model=settings.default_model,
        ),
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    app.state.access = access  # the HTTP protocol's shedder checks keys with it
    return app


def preflight(settings: Settings) -> list[str]:
    """What ``serve`` checks before it listens: the store answers, and every ``--pin`` and
    ``--preload`` names a model in it. Nothing is loaded. Returns warnings: tenants of the
    ``--tenant-limits`` file with no model in the store (a typo there limits nobody).

    Raises:
        StoreUnavailable: the store cannot be used; ``for_operator()`` says what to fix.
        ModelNotFound: a pin or preload matches no model (the message names the nearest).
        InvalidModelId: a pin or preload that is not a model id.
        ValueError: a keys or limits file that cannot be read or is malformed.
    """
    _keys(settings)
    limits = _limits(settings)
    store = _open_store(settings)
    store.check()
    resolve_patterns(settings.pin, store.list, what="--pin")
    resolve_patterns(settings.preload, store.list, what="--preload")
    named = sorted((limits.tenants or {}).keys())
    missing = [tenant for tenant in named if not store.list(tenant)]
    if not missing:
        return []
    held = sorted({model_id.split("/", 1)[0] for model_id in store.list("")})
    return [
        f"--tenant-limits names tenant {tenant!r}, which has no model in the store"
        + (f" (nearest: {', '.join(near)})" if (near := get_close_matches(tenant, held)) else "")
        for tenant in missing
    ]


async def _store_problem(store: ModelStore, executor: BoundedExecutor) -> str | None:
    try:
        await executor.run_io(store.check)
    except StoreUnavailable as exc:
        return exc.for_operator()
    return None


async def _watch_store(
    service: InferenceService, store: ModelStore, executor: BoundedExecutor
) -> None:
    """Re-check a store that failed its check until it passes; readiness follows."""
    while service.store_problem is not None:
        await asyncio.sleep(_STORE_RECHECK_S)
        service.store_problem = await _store_problem(store, executor)
    log.info("model store %s answers again: ready", store.url)


def _open_store(settings: Settings, disk_cache: DiskCache | None = None) -> ModelStore:
    return open_store(
        settings.store,
        cache_dir=settings.cache_dir,
        max_cache_bytes=settings.disk_cache,
        disk_cache=disk_cache,
        retry_deadline_s=settings.store_retry_deadline_s,
        read_timeout_s=settings.store_read_timeout_s,
        verify_etag=settings.store_verify_etag,
    )


def _keys(settings: Settings) -> KeyRing | None:
    """The configured API keys, or ``None`` when authentication is off."""
    if settings.api_keys is not None:
        return KeyRing.load(settings.api_keys)
    if settings.api_keys_json is not None:
        secret = settings.api_keys_json.get_secret_value()
        return KeyRing.from_json(secret, where="TENANTSERVE_API_KEYS_JSON")
    return None


def _limits(settings: Settings) -> TenantLimits:
    """Per-tenant quotas: the flags give the defaults; a limits file may override them."""
    default = TenantLimit(
        rate_per_s=settings.tenant_rate_per_s,
        burst=settings.tenant_burst,
        max_concurrent=settings.tenant_max_concurrent,
        max_memory_fraction=settings.tenant_max_memory_fraction,
    )
    if settings.tenant_limits is None:
        return TenantLimits(default)
    return TenantLimits.load(settings.tenant_limits, default=default)


def _budget(settings: Settings, limits: TenantLimits) -> MemoryBudget:
    default_cap, caps = limits.memory_caps(settings.memory_budget)
    return MemoryBudget(settings.memory_budget, tenant_cap_bytes=default_cap, tenant_caps=caps)


class _App(Starlette):
    """Starlette, with every request first through the front door (the origin guard when keys
    are off, the shutdown cutoff, inferences straight to their handlers;
    protocols/endpoint.py), and only then, for the rest, through Starlette's own stack."""

    def __init__(
        self,
        *,
        service: InferenceService,
        guard_hosts: tuple[str, ...] | None,
        **starlette: Any,
    ) -> None:
        self._service = service
        self._guard_hosts = guard_hosts  # None: no origin guard (keys are on, or waived)
        super().__init__(**starlette)

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        guard = None
        if self._guard_hosts is not None:
            guard = OriginGuard(inner, allowed_hosts=self._guard_hosts)
        return FrontDoor(inner, self.routes, ready=self._service.ready, guard=guard)


def run_server(app: Starlette, *, drain_s: float = 0.0, **uvicorn_options: Any) -> None:
    """Serve ``app`` (made by :func:`build_app`) with uvicorn until SIGTERM or SIGINT.

    Shutdown, all within the app's grace period (``shutdown_grace_s``): readiness turns 503
    at once; new connections are still taken for ``drain_s``; then the listener closes,
    requests in flight (those waiting on a model load too) finish, and models are unloaded.
    ``uvicorn_options`` go to ``uvicorn.Config`` (host, port, loop, http, …).
    """
    service: InferenceService = app.state.service
    _DrainingServer(uvicorn.Config(app, **uvicorn_options), service, drain_s=drain_s).run()


class _DrainingServer(uvicorn.Server):
    """uvicorn with a drain before its shutdown, and its wait for requests bounded by ours.

    The first SIGTERM or SIGINT turns readiness off; the listener stays open ``drain_s``
    longer (a second signal ends the drain). uvicorn then closes it and waits for requests in
    flight for what is left of the grace period, less a reserve for unloading models.
    """

    def __init__(
        self, config: uvicorn.Config, service: InferenceService, *, drain_s: float
    ) -> None:
        super().__init__(config)
        self._service = service
        self._drain_s = drain_s
        self._draining: tuple[int, float] | None = None  # the signal, and when the drain ends

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is None and not self.should_exit:
            self._service.stop_accepting()
            if self._drain_s > 0:
                log.info("shutting down: not ready; new connections close in %gs", self._drain_s)
                self._draining = (sig, time.monotonic() + self._drain_s)
                return
        self._draining = None
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        draining = self._draining
        if draining is not None and time.monotonic() >= draining[1]:
            self._draining = None
            super().handle_exit(draining[0], None)
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace_s = self._service.shutdown_grace_s
        reserve_s = min(_CLOSE_RESERVE_MAX_S, _CLOSE_RESERVE_FRACTION * grace_s)
        # uvicorn waits this long for requests in flight, then cancels them.
        left_s = self._service.shutdown_left_s() - reserve_s
        self.config.timeout_graceful_shutdown = max(0, math.floor(left_s))
        await super().shutdown(sockets)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (405 on a known path with another method) in our JSON shape."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)
