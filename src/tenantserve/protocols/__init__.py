"""The edge: ``routes(service, metrics)`` is the one place URLs are assembled."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

import orjson
import prometheus_client
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

from tenantserve.protocols.auth import Access
from tenantserve.protocols.errors import Handler, guarded, json_response
from tenantserve.protocols.keys import Role
from tenantserve.protocols.management import management_routes
from tenantserve.protocols.oip.routes import oip_routes
from tenantserve.protocols.openapi import openapi_document
from tenantserve.protocols.sagemaker.routes import sagemaker_routes

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

__all__ = ["routes", "server_version"]


def routes(
    service: InferenceService,
    metrics: Metrics,
    *,
    max_body_bytes: int,
    store_url: str = "",
    access: Access | None = None,
    open_metrics: bool = False,
    default_model: str | None = None,
) -> list[BaseRoute]:
    """Every HTTP route of the server: OIP v2, SageMaker, ``/metrics`` and ``/openapi.json``.

    Args:
        service: the core every inference and management route calls.
        metrics: where invocations are counted; ``/metrics`` renders its registry.
        max_body_bytes: the largest request body read; larger ones get 413.
        store_url: the configured store's URL; SageMaker ``POST /models`` accepts
            ``<store_url>/<id>`` as well as the bare id.
        access: API-key authentication and scopes; ``None`` serves everyone (loopback only).
        open_metrics: with keys on, ``/metrics`` is open anyway (it names every tenant's
            models, so by default it needs a key with the ``metrics`` role).
        default_model: the model SageMaker's ``/invocations`` serves when no header names
            one (a single-model endpoint).
    """
    access = access or Access(None, max_body_bytes=max_body_bytes)
    version = server_version()
    openapi = orjson.dumps(openapi_document(version))

    async def metrics_text(request: Request) -> Response:
        # Rendering walks every collector (the cache's included): keep it off the event loop.
        body = await run_in_threadpool(prometheus_client.generate_latest, metrics.registry)
        return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def openapi_json(request: Request) -> Response:
        return Response(openapi, media_type="application/json")

    metrics_route: Handler = metrics_text
    if access.enabled and not open_metrics:
        metrics_route = guarded(access.protect(metrics_text, Role.METRICS), "oip")
    return [
        *oip_routes(
            service, metrics, max_body_bytes=max_body_bytes, version=version, access=access
        ),
        *sagemaker_routes(
            service,
            metrics,
            max_body_bytes=max_body_bytes,
            store_url=store_url,
            access=access,
            default_model=default_model,
        ),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        *management_routes(service, version=version, access=access),
        _NotFound(),
    ]


class _NotFound(BaseRoute):
    """Every path no route takes gets a JSON 404 like every other error, not Starlette's
    plain-text one: a path that holds a line break, say, matches no ``{id:path}`` pattern.

    It matches only partially, and last: a known path asked with the wrong method keeps its
    405, because Starlette answers with the first partial match.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.PARTIAL if scope["type"] == "http" else Match.NONE), {}

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"error": "no such route; the routes are listed at /openapi.json"}
        await json_response(body, 404)(scope, receive, send)


def server_version() -> str:
    """The installed package's version, as ``GET /v2`` and gRPC ``ServerMetadata`` show it."""
    try:
        return importlib.metadata.version("tenantserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
