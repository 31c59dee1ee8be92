"""The one invoke sequence every protocol's inference routes share, and route handlers made
whole: every error becomes a response; inferences are counted and timed."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tenantserve.errors import InvalidRequest
from tenantserve.metrics import Metrics
from tenantserve.protocols.auth import Access, authorize
from tenantserve.protocols.body import read_body
from tenantserve.protocols.errors import CLIENT_CLOSED, ProtocolName, error_response
from tenantserve.protocols.keys import Role
from tenantserve.types import ModelRef, ResolvedModel, Tensors, TensorSpec

if TYPE_CHECKING:
    from tenantserve.service import InferenceService

Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")
D = TypeVar("D")

OFF_LOOP_BYTES = 64 * 1024
"""Bodies larger than this are parsed and decoded on an I/O thread: a 6 MiB body of nested
JSON takes the loop for most of a second, every other request's time."""


class Codec(Protocol[D]):
    """How one protocol reads an inference and writes its answer; ``D`` is its parsed form."""

    def parse(self, headers: Headers, body: bytes) -> D:
        """What the body says, checked as far as it can be without the model."""
        ...

    def tensors(self, parsed: D, inputs: tuple[TensorSpec, ...]) -> Tensors:
        """The model's input tensors, given its input signature."""
        ...

    def outputs(self, parsed: D) -> Sequence[str] | None:
        """The outputs asked for by name; ``None``: all."""
        ...

    def encode(self, parsed: D, model: ResolvedModel, outputs: Tensors) -> Response:
        """The answer, naming the model as asked and the version that served it."""
        ...


async def invoke(
    request: Request,
    service: InferenceService,
    ref: ModelRef,
    codec: Codec[D],
    max_body_bytes: int,
) -> Response:
    """The invoke sequence: authorize → resolve the version → admit (quotas, a slot, the load
    queue: every refusal before the body is read) → read the body (bounded) → parse it (off
    the loop when large) → lease, decode and predict (cancelled if the client leaves) →
    encode."""
    authorize(request, ref.model_id)
    model = await service.resolve(ref)
    async with service.call(model.key) as call:
        body = await read_body(request, max_body_bytes)
        large = len(body) > OFF_LOOP_BYTES
        headers = request.headers
        parsed = (
            await call.off_loop(codec.parse, headers, body) if large else codec.parse(headers, body)
        )
        decode = functools.partial(codec.tensors, parsed)
        work = call.predict(decode, outputs=codec.outputs(parsed), offload=large)
        prediction = await unless_disconnected(request, work)
    response = codec.encode(parsed, model, prediction.outputs)
    response.headers[CACHE_HEADER] = "hit" if prediction.hit else "miss"
    return response


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


def invocation(
    handler: Handler, protocol: ProtocolName, metrics: Metrics, access: Access, role: Role
) -> Handler:
    """An inference route's whole wrapper, in one step: ``handler`` behind authentication
    and ``role``, every exception answered as :func:`guarded` answers it, and the answer
    counted in ``invocations{protocol,code}`` and timed in ``request_seconds``.

    Only inference endpoints are wrapped with this, so the counters match SageMaker's
    ``Invocations`` metric rather than every health probe.
    """
    invocations, seconds = metrics.invocations, metrics.request.labels(protocol)

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if "\n" in request.scope["path"]:
                raise InvalidRequest("the request path holds a line break")  # see guarded
            request = await access.admit(request, role)
            response = await handler(request)
        except ClientDisconnect:
            response = Response(status_code=CLIENT_CLOSED)
        except Exception as exc:  # the one place any failure becomes an HTTP answer
            response = error_response(exc, protocol)
        invocations.labels(protocol, str(response.status_code)).inc()
        seconds.observe(time.perf_counter() - started)
        return response

    return endpoint


CACHE_HEADER = "X-Tenantserve-Cache"
"""Response header on inferences: ``hit`` when the model was resident as the request arrived,
``miss`` when the request waited for (or started) its load — for load generators and
debugging; clients may ignore it."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Call it once the body has been read. uvicorn does not cancel a handler whose client went
    away; without this a closed connection would keep its admission slot, its place in the
    predict queue and its tenant's quota until the model answered for nobody. One watcher
    task per request, which cancels this one on a disconnect: ``work`` runs in the caller's
    own task, not in a task of its own.

    Raises:
        ClientDisconnect: the client went away; ``work`` was cancelled and has unwound.
    """
    current = asyncio.current_task()
    assert current is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await request.receive())["type"] != "http.disconnect":
            pass  # a late body chunk; only the disconnect matters here
        left = True
        current.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # ours (server shutdown), not the client's
        current.uncancel()
        raise ClientDisconnect() from None
    finally:
        # No await since ``work`` returned: the watcher cannot have cancelled us after it.
        watcher.cancel()
