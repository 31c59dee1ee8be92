"""Composition root: build_app(settings) wires store → cache → scheduling → service → routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from tenantserve.cache import LRU, CostAware, MemoryBudget, ModelCache
from tenantserve.config import Settings
from tenantserve.errors import StoreUnavailable
from tenantserve.metrics import Metrics
from tenantserve.protocols import routes
from tenantserve.runtimes import default_runtimes
from tenantserve.scheduling.admission import Admission
from tenantserve.scheduling.executor import BoundedExecutor
from tenantserve.service import InferenceService
from tenantserve.store import open_store

log = logging.getLogger("tenantserve")


def build_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> Starlette:
    """The ASGI app for ``settings``. Nothing starts until the app's lifespan runs."""
    metrics = Metrics(registry)
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
        budget=MemoryBudget(settings.memory_budget_bytes),
        metrics=metrics,
        io_executor=executor.io,
        load_executor=executor.load,
        policy=(
            CostAware(min_residency_s=settings.min_residency_s)
            if settings.eviction == "cost"
            else LRU()
        ),
        max_concurrent_loads=settings.max_concurrent_loads,
        load_wait_s=settings.load_wait_s,
        failed_load_ttl_s=settings.failed_load_ttl_s,
    )
    metrics.watch_cache(cache.snapshot)
    admission = Admission(
        max_in_flight=settings.max_in_flight,
        max_queued=settings.max_in_flight * 4,
        queue_timeout_s=settings.queue_timeout_s,
        metrics=metrics,
    )
    service = InferenceService(
        cache=cache, store=store, admission=admission, executor=executor, metrics=metrics
    )

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
            service, metrics, max_body_bytes=settings.max_body_bytes, store_url=store.url
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    return app
