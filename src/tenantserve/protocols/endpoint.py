"""How an HTTP inference is served: the front door, the one invoke sequence every protocol's
inference routes share, and the bounded body.

An inference is most of the traffic and its endpoint answers every error itself, so Starlette's
router, its two exception middlewares and its per-request wrappers are work with nothing to
do: measured, they were a large part of the event loop's time per request. :class:`FrontDoor`
tries the few :class:`InferenceRoute`s first (a prefix test, then the route's own pattern) and
calls the endpoint with a plain Request; any other request goes to the Starlette app it wraps,
unchanged. The origin guard (keys off: no request from a web page; protocols/origin_guard.py)
and the shutdown cutoff (a request still running when the grace period ends gets 503, not
uvicorn's 500) apply to both.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantserve.errors import InvalidRequest, PayloadTooLarge
from tenantserve.metrics import Metrics
from tenantserve.protocols.auth import Access, authorize
from tenantserve.protocols.errors import CLIENT_CLOSED, Handler, ProtocolName, error_response
from tenantserve.protocols.keys import Role
from tenantserve.protocols.origin_guard import OriginGuard, forbidden
from tenantserve.types import ModelRef, ResolvedModel, Tensors, TensorSpec

if TYPE_CHECKING:
    from tenantserve.service import InferenceService

D = TypeVar("D", bound="Parsed")

OFF_LOOP_BYTES = 64 * 1024
"""Bodies larger than this are parsed and decoded on an I/O thread: a 6 MiB body of nested
JSON takes the loop for most of a second, every other request's time."""

CACHE_HEADER = "X-Tenantserve-Cache"
"""Response header on inferences: ``hit`` when the model was resident as the request arrived,
``miss`` when the request waited for (or started) its load — for load generators and
debugging; clients may ignore it."""

_SHUTTING_DOWN = b'{"error": "server is shutting down and could not finish this request; retry"}'
# zlib's window bits: 16 + MAX_WBITS reads a gzip wrapper, MAX_WBITS a zlib ("deflate") one.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


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


class Parsed(Protocol):
    """What a codec reads from a body: the model's inputs (or how to decode them from the
    model's signature) and the outputs asked for by name (``None``: all)."""

    @property
    def inputs(self) -> Tensors | Callable[[tuple[TensorSpec, ...]], Tensors]: ...

    @property
    def outputs(self) -> Sequence[str] | None: ...


class Codec(Protocol[D]):
    """How one protocol reads an inference and writes its answer; ``D`` is its parsed form."""

    def parse(self, headers: Headers, body: bytes) -> D:
        """What the body says, checked as far as it can be without the model."""
        ...

    def encode(self, parsed: D, model: ResolvedModel, outputs: Tensors) -> Response:
        """The answer, naming the model as asked and the version that served it."""
        ...


def inference(
    codec: Codec[Any],
    service: InferenceService,
    *,
    protocol: ProtocolName,
    metrics: Metrics,
    access: Access,
    max_body_bytes: int,
    target: Callable[[Request], ModelRef] | None = None,
) -> Handler:
    """An inference route's endpoint: the invoke sequence, in order — authenticate (the
    ``invoke`` role) → the model the path names (``{model}`` and an optional ``{version}``),
    or ``target``'s → admit it (its version, quotas, a slot, the load queue: every refusal
    before the body is read) → read the body (bounded) → parse it (off the loop when large)
    → lease, decode and predict (cancelled if the client leaves) → encode. Every exception is
    answered through :func:`error_response`; each answer is counted in
    ``invocations{protocol,code}`` (so the counters match SageMaker's ``Invocations``, not
    every health probe) and timed in ``request_seconds``."""
    invocations, seconds = metrics.invocations, metrics.request.labels(protocol)

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if "\n" in request.scope["path"]:
                raise InvalidRequest("the request path holds a line break")  # see guarded
            request = await access.admit(request, Role.INVOKE)
            if target is None:
                path = request.path_params
                ref = ModelRef.parse(path["model"], path.get("version", ""))
            else:
                ref = target(request)
            authorize(request, ref.model_id)
            async with service.call(ref) as call:
                body = await read_body(request, max_body_bytes)
                large = len(body) > OFF_LOOP_BYTES
                parsed = (
                    await call.off_loop(codec.parse, request.headers, body)
                    if large
                    else codec.parse(request.headers, body)
                )
                work = call.predict(parsed.inputs, outputs=parsed.outputs, offload=large)
                # uvicorn does not cancel a handler whose client went away: without the
                # watcher a closed connection would keep its slot, its place in the predict
                # queue and its tenant's quota until the model answered for nobody.
                current = asyncio.current_task()
                assert current is not None
                left: list[bool] = []
                watcher = asyncio.get_running_loop().create_task(_watch(request, current, left))
                try:
                    prediction = await work
                except asyncio.CancelledError:
                    if not left:
                        raise  # ours (server shutdown), not the client's
                    current.uncancel()
                    raise ClientDisconnect() from None
                finally:
                    watcher.cancel()  # no await since ``work`` returned: it cannot cancel us
            response = codec.encode(parsed, call.model, prediction.outputs)
            response.headers[CACHE_HEADER] = "hit" if prediction.hit else "miss"
        except ClientDisconnect:
            # Nobody is left to read an answer; not a server error, so no traceback either.
            response = Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # the one place any failure becomes an HTTP answer
            response = error_response(exc, protocol)
        invocations.labels(protocol, str(response.status_code)).inc()
        seconds.observe(time.perf_counter() - started)
        return response

    return endpoint


async def _watch(request: Request, task: asyncio.Task[Any], left: list[bool]) -> None:
    """Cancel the request's ``task`` when its client disconnects (noted in ``left``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # a late body chunk; only the disconnect matters here
    left.append(True)
    task.cancel()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, never holding more than ``max_bytes`` of it.

    A declared ``Content-Length`` over the cap is refused before a byte is read; a chunked or
    lying body is refused at the first chunk that crosses the cap. A ``Content-Encoding`` of
    gzip or deflate (tritonclient can compress requests) is inflated under the same cap, so a
    small compressed bomb cannot expand past it.

    Raises:
        PayloadTooLarge: the body (or its inflated form) is over ``max_bytes``.
        InvalidRequest: a malformed ``Content-Length``, an unknown or corrupt encoding.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidRequest("Content-Length is not a number")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(_too_large(max_bytes))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflate = None
    elif encoding in _WBITS:
        inflate = zlib.decompressobj(_WBITS[encoding])
    else:
        raise InvalidRequest(f"unsupported Content-Encoding {encoding[:32]!r}")

    body = bytearray()
    async for chunk in request.stream():
        if inflate is None:
            body += chunk
        else:
            try:
                # max_length bounds the output of this one call: one byte past the cap is
                # enough to know the body is too large.
                body += inflate.decompress(chunk, max_bytes + 1 - len(body))
            except zlib.error as exc:
                raise InvalidRequest(f"request body is not valid {encoding}") from exc
        if len(body) > max_bytes:
            raise PayloadTooLarge(_too_large(max_bytes))
    if inflate is not None and not inflate.eof:
        raise InvalidRequest(f"request body is a truncated {encoding} stream")
    return bytes(body)


def _too_large(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes} bytes"


async def _cut_off(send: Send) -> None:
    """uvicorn cancels a request still running when the grace period ends; it would answer
    500 and log a traceback: 503 + Retry-After tells clients and balancers to go elsewhere."""
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
    try:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _SHUTTING_DOWN})
    except Exception:  # the response had started, or the client is gone
        raise asyncio.CancelledError from None
