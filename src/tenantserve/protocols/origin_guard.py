"""OriginGuard: without API keys, only this machine may call, not a web page it has open.

A server bound to loopback without keys trusts whoever can reach the port. Two ways for a web
page to reach it anyway: DNS rebinding (a page's own name made to resolve to 127.0.0.1, sent
with that name in Host) and cross-site form posts (a browser sends simple POSTs to any origin
without asking). So, when keys are off:

- the Host header must name loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or a
  name the operator allowed (``--allowed-hosts``);
- a state-changing request (anything but GET, HEAD, OPTIONS) from a browser of another origin
  (``Origin``, or ``Sec-Fetch-Site: cross-site``) is refused;
- management routes refuse the content types a browser form can send without asking
  (``text/plain``, form-encoded, multipart): a JSON body or none.

Each refusal is a 403 with a JSON error saying what to do. Pure ASGI: a request that passes
costs a few header lookups.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MANAGEMENT = ("/v2/repository/", "/models", "/v1/models/")
# What an HTML form (or fetch without a preflight) may send to any origin.
_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


class OriginGuard:
    """Refuse non-loopback Host names and cross-site browser requests (keys off only)."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str] = ()) -> None:
        self._app = app
        self._hosts = _LOOPBACK | {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await forbidden(send, refusal)
                return
        await self._app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why this HTTP request is refused (403), or ``None`` to serve it."""
        headers = {k: v for k, v in scope.get("headers", ()) if k in _WANTED}
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        if host not in self._hosts:
            return (
                f"Host {host[:64]!r} is not served without API keys (a DNS-rebinding guard): "
                "call it as localhost or 127.0.0.1, add the name with --allowed-hosts, or give "
                "--api-keys"
            )
        if scope.get("method", "GET") in _SAFE_METHODS:
            return None
        origin = headers.get(b"origin")
        if origin is not None and _hostname(origin.decode("latin-1")) not in self._hosts:
            return "cross-origin requests that change state are refused without API keys"
        if headers.get(b"sec-fetch-site") == b"cross-site":
            return "cross-site requests that change state are refused without API keys"
        path: str = scope.get("path", "")
        if path.startswith(_MANAGEMENT):
            media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            if media.decode("latin-1") in _FORM_TYPES:
                return "management requests take a JSON body (Content-Type: application/json)"
        return None


_WANTED = frozenset({b"host", b"origin", b"sec-fetch-site", b"content-type"})


def _hostname(value: str) -> str:
    """The host of a Host header (``name:port``, ``[::1]:8080``) or an Origin URL, lowercased."""
    if "://" in value:
        return (urlsplit(value).hostname or "").lower()
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


async def forbidden(send: Send, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
