"""Composition root: build_app(settings) wires store → cache → scheduling → service → routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from tenantserve.activity import Activity
from tenantserve.cache import LRU, CostAware, MemoryBudget, ModelCache
from tenantserve.config import Settings
from tenantserve.errors import StoreUnavailable
from tenantserve.metrics import Metrics
from tenantserve.protocols import routes
from tenantserve.protocols.auth import Access
from tenantserve.protocols.keys import KeyRing
from tenantserve.runtimes import default_runtimes
from tenantserve.scheduling.admission import Admission
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.scheduling.fair import FairExecutor
from tenantserve.scheduling.tenant_limits import TenantLimit, TenantLimits, TenantQuotas
from tenantserve.service import InferenceService
from tenantserve.store import open_store

log = logging.getLogger("tenantserve")


def build_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> Starlette:
    """The ASGI app for ``settings``. Nothing starts until the app's lifespan runs.

    Raises:
        ValueError: an API key or tenant limits file that cannot be read or is malformed.
    """
    keys = _keys(settings)
    limits = _limits(settings)
    metrics = Metrics(registry, top_tenants=settings.top_tenants)
    activity = Activity(registry=metrics.registry, model_label_top_k=settings.top_models)
    store = open_store(
        settings.store,
        cache_dir=settings.cache_dir,
        max_cache_bytes=settings.disk_cache_bytes,
        retry_deadline_s=settings.store_retry_deadline_s,
    )
    executor = BoundedExecutor(
        compute_threads=settings.threads,
        load_threads=settings.max_concurrent_loads,
        io_threads=settings.max_concurrent_loads * 2,
    )
    cache = ModelCache(
        store=store,
        runtimes=default_runtimes(),
        budget=_budget(settings, limits),
        metrics=metrics,
        io_executor=executor.io,
        load_executor=executor.load,
        policy=(
            CostAware(min_residency_s=settings.min_residency_s)
            if settings.eviction == "cost"
            else LRU()
        ),
        max_concurrent_loads=settings.max_concurrent_loads,
        max_queued_loads=settings.max_queued_loads,
        max_loads_per_s=settings.max_loads_per_s,
        load_wait_s=settings.load_wait_s,
        failed_load_ttl_s=settings.failed_load_ttl_s,
        events=activity.cache_event,
    )
    metrics.watch_cache(cache.snapshot)
    admission = Admission(
        max_in_flight=settings.max_in_flight,
        max_queued=settings.max_in_flight * 4,
        queue_timeout_s=settings.queue_timeout_s,
        metrics=metrics,
    )
    service = InferenceService(
        cache=cache,
        store=store,
        admission=admission,
        executor=executor,
        metrics=metrics,
        predictor=FairExecutor(executor.compute, workers=settings.threads, metrics=metrics),
        quotas=TenantQuotas(limits, metrics=metrics),
        activity=activity,
    )
    metrics.watch_scheduling(service.scheduling)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await executor.run_io(store.check)
        except StoreUnavailable as exc:
            # Serve anyway: the store may come back, and each request then says why it failed.
            log.error("model store %s is not reachable: %s", store.url, exc)
        await cache.start()
        await service.preload(settings.pin, pin=True)
        await service.preload(settings.preload)
        service.start()
        if keys is None:
            log.warning(
                "authentication is OFF: anyone who can reach %s:%d may call and manage every "
                "model; give --api-keys FILE to require keys", settings.host, settings.port,
            )  # fmt: skip
        log.info(
            "serving store %s with a %d-byte memory budget", store.url,
            settings.memory_budget_bytes,
        )  # fmt: skip
        try:
            yield
        finally:
            service.stop_accepting()
            await cache.close()
            executor.shutdown()

    app = Starlette(
        routes=routes(
            service,
            metrics,
            max_body_bytes=settings.max_body_bytes,
            store_url=store.url,
            access=Access(keys, max_body_bytes=settings.max_body_bytes),
            protect_metrics=settings.protect_metrics,
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    return app


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
        max_memory_fraction=settings.max_tenant_memory_fraction,
    )
    if settings.tenant_limits is None:
        return TenantLimits(default)
    return TenantLimits.load(settings.tenant_limits, default=default)


def _budget(settings: Settings, limits: TenantLimits) -> MemoryBudget:
    default_cap, caps = limits.memory_caps(settings.memory_budget_bytes)
    return MemoryBudget(
        settings.memory_budget_bytes, tenant_cap_bytes=default_cap, tenant_caps=caps
    )
