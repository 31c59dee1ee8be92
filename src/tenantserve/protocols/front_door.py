"""FrontDoor: inference requests straight to their handlers, everything else through routing.

An inference is most of the traffic and the handler already answers every error itself
(``endpoint.guarded``), so Starlette's router, its two exception middlewares and its
per-request wrappers are work with nothing to do: measured, they were a large part of the
event loop's time per request. The front door tries the few ``InferenceRoute``s first (a
prefix test, then the route's own pattern) and calls the endpoint with a plain Request; any
other request goes to the Starlette app it wraps, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send


class InferenceRoute(Route):
    """A POST route that runs inferences: the front door serves it without the router."""


class FrontDoor:
    """Pure ASGI: ``InferenceRoute``s of ``routes`` first, ``app`` for everything else."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self._app = app
        self._routes = [r for r in routes if isinstance(r, InferenceRoute)]
        # Literal path starts: most requests are told apart here, with no regex at all.
        self._prefixes = tuple(r.path.split("{", 1)[0] for r in self._routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
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
