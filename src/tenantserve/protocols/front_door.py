"""FrontDoor: every request's first stop — the origin guard, the shutdown cutoff, and then
inference requests straight to their handlers, everything else through routing.

An inference is most of the traffic and its handler already answers every error itself
(``endpoint.invocation``), so Starlette's router, its two exception middlewares and its
per-request wrappers are work with nothing to do: measured, they were a large part of the
event loop's time per request. The front door tries the few ``InferenceRoute``s first (a
prefix test, then the route's own pattern) and calls the endpoint with a plain Request; any
other request goes to the Starlette app it wraps, unchanged. The guard (keys off: no
request from a web page; protocols/origin_guard.py) and the cutoff (a request still running
when the shutdown grace period ends gets 503, not uvicorn's 500) apply to both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantserve.protocols.origin_guard import OriginGuard, forbidden

_SHUTTING_DOWN = b'{"error": "server is shutting down and could not finish this request; retry"}'


class InferenceRoute(Route):
    """A POST route that runs inferences: the front door serves it without the router."""


class FrontDoor:
    """Pure ASGI: ``InferenceRoute``s of ``routes`` first, ``app`` for everything else.

    Args:
        ready: whether the server is serving; a cancellation after it turned false is the
            shutdown's, answered 503.
        guard: the origin guard, when keys are off; ``None`` when they are on (or waived).
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Sequence[BaseRoute],
        *,
        ready: Callable[[], bool],
        guard: OriginGuard | None = None,
    ) -> None:
        self._app = app
        self._routes = [r for r in routes if isinstance(r, InferenceRoute)]
        # Literal path starts: most requests are told apart here, with no regex at all.
        self._prefixes = tuple(r.path.split("{", 1)[0] for r in self._routes)
        self._ready = ready
        self._guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._guard is not None:
            refusal = self._guard.refusal(scope)
            if refusal is not None:
                await forbidden(send, refusal)
                return
        try:
            if scope["method"] == "POST":
                path: str = scope["path"]
                for route, prefix in zip(self._routes, self._prefixes, strict=True):
                    if path.startswith(prefix):
                        match, child = route.matches(scope)
                        if match is Match.FULL:
                            scope.update(child)
                            response = await route.endpoint(Request(scope, receive, send))
                            await response(scope, receive, send)
                            return
            await self._app(scope, receive, send)
        except asyncio.CancelledError:
            if self._ready():
                raise  # not the shutdown's to answer
            await _cut_off(send)


async def _cut_off(send: Send) -> None:
    """uvicorn cancels a request still running when the grace period ends; it would answer
    500 and log a traceback: 503 + Retry-After tells clients and balancers to go elsewhere."""
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    try:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _SHUTTING_DOWN})
    except Exception:  # the response had started, or the client is gone
        raise asyncio.CancelledError from None
