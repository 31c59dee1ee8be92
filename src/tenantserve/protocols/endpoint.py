"""Route handlers made whole: every error becomes a response; inferences are counted and timed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from tenantserve.errors import InvalidRequest
from tenantserve.metrics import Metrics
from tenantserve.protocols.errors import CLIENT_CLOSED, ProtocolName, error_response
from tenantserve.types import ModelId

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def guarded(handler: Handler, protocol: ProtocolName) -> Handler:
    """``handler`` with every exception answered through :func:`error_response`."""

    async def endpoint(request: Request) -> Response:
        try:
            if "\n" in request.scope["path"]:
                # Route patterns end in "$", which also matches before a final "\n": the
                # captured model name would silently lose it (``acme/m%0A`` → ``acme/m``).
                raise InvalidRequest("the request path holds a line break")
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


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Call it once the body has been read. uvicorn does not cancel a handler whose client went
    away; without this a closed connection would keep its admission slot, its place in the
    predict queue and its tenant's quota until the model answered for nobody.

    Raises:
        ClientDisconnect: the client went away; ``work`` was cancelled and has unwound.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request.receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        # On our own cancellation too (server shutdown): neither may outlive the request.
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # a late body chunk; only the disconnect matters here
