"""Route handlers made whole: every error becomes a response; inferences are counted and timed."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tenantserve.metrics import Metrics
from tenantserve.protocols.errors import CLIENT_CLOSED, ProtocolName, error_response
from tenantserve.types import ModelId

Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler, protocol: ProtocolName) -> Handler:
    """``handler`` with every exception answered through :func:`error_response`."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientDisconnect:
            # Nobody is left to read an answer; not a server error, so no traceback either.
            return Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # the one place any failure becomes an HTTP answer
            return error_response(exc, protocol)

    return endpoint


def invocation(handler: Handler, protocol: ProtocolName, metrics: Metrics) -> Handler:
    """Like :func:`guarded`, and records ``invocations{protocol,code}`` and ``request_seconds``.

    Only inference endpoints are wrapped with this, so the counters match SageMaker's
    ``Invocations`` metric rather than every health probe.
    """
    inner = guarded(handler, protocol)

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        response = await inner(request)
        metrics.invocations.labels(protocol, str(response.status_code)).inc()
        metrics.request.labels(protocol).observe(time.perf_counter() - started)
        return response

    return endpoint


CACHE_HEADER = "X-Tenantserve-Cache"
"""Response header on inferences: ``hit`` when the model was resident as the request arrived,
``miss`` when the request waited for (or started) its load — for load generators and
debugging; clients may ignore it."""


class _Residency(Protocol):
    def is_resident(self, model_id: ModelId) -> bool: ...


def cache_state(service: _Residency, model_id: ModelId) -> str:
    return "hit" if service.is_resident(model_id) else "miss"
