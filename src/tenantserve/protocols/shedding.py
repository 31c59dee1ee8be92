"""Shedder: a request the server would refuse anyway, refused before it becomes a request.

Past capacity, a refusal that costs as much as an answer halves what the server can answer
(a soak at twice capacity measured a fifth of capacity answered). When every admission slot
is taken and the queue is full with no longer queue to shed for this tenant, the answer is
known from the request line and one header: the HTTP protocol asks here right after the
head is parsed and writes a canned 503 (Retry-After) with no ASGI task, no Request, no
router. Anything unclear (an encoded path, a bad id) goes the usual way, which refuses
it the same (only slower) or serves it.

With API keys on, while the load queue refuses its tenant's new loads, a first call it would
refuse before its model's versions are read (``InferenceService.refusal_before_read``) is
answered here too, for a caller whose key may invoke that model: anyone else goes the usual
way (401, 403), so a refusal here tells nothing about a model to a caller who may not use it.
A storm of 300 first calls from 64 clients sat ~0.5 ms each in the ASGI stack only to be
refused.

A storm's first wave arrives in one turn of the event loop: every head is read before any
request reaches the load queue, so the queue looks empty to all of them. The first calls
let through in the same turn are counted here, per tenant, until the requests have counted
themselves (two turns on), so a wave of 64 sends the queue its room and no more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING

from starlette.responses import Response

from tenantserve.errors import InvalidModelId, Overloaded, Unauthenticated
from tenantserve.protocols.auth import API_KEY_HEADER, Access
from tenantserve.protocols.errors import ProtocolName, error_response
from tenantserve.protocols.keys import Role
from tenantserve.types import ModelRef

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

_OIP = b"/v2/models/"
_SAGEMAKER_MODELS = b"/models/"
_TARGET_HEADERS = (b"x-amzn-sagemaker-target-model", b"x-amzn-target-model")
_API_KEY = API_KEY_HEADER.encode("ascii")


class Shedder:
    """``__call__(method, target, headers)`` → response bytes, or ``None`` to serve."""

    def __init__(
        self, service: InferenceService, metrics: Metrics, access: Access | None = None
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._access = access if access is not None and access.enabled else None
        busy = Overloaded("server is at capacity; retry shortly", retry_after_s=1.0)
        self._answers = {protocol: _raw(busy, protocol) for protocol in ("oip", "sagemaker")}
        self._passed: dict[str, set[str]] = {}  # first calls let through, by tenant (above)

    def __call__(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bytes | None:
        if method != b"POST":
            return None
        path = target.split(b"?", 1)[0]
        found = _model_of(path, headers)
        if found is None:
            return None
        protocol, raw = found
        try:
            ref = ModelRef.parse(raw.decode("ascii"))
        except (InvalidModelId, UnicodeDecodeError):
            return None
        if self._service.refuses_at_once(ref.model_id):  # its tenant is what counts
            self._metrics.invocations.labels(protocol, "503").inc()
            return self._answers[protocol]
        if self._access is None or b"/versions/" in path:
            return None
        tenant, model = ref.model_id.tenant, ref.model_id.value
        passed = self._passed.get(tenant)
        if passed and model in passed:
            return None  # it will join the load of the one let through
        starting = len(passed) if passed else 0
        # A tenant's state, as above: only then is a key checked here (a warm request would
        # pay the key ring's lookup twice, ~45 us with 1,000 keys).
        if self._service.refuses_first_calls(tenant, starting):
            refused = self._first_call_refused(self._access, protocol, ref, headers, starting)
            if refused is not None:
                return refused
        if self._service.unread(ref.model_id):
            self._let_through(tenant, model)
        return None

    def _let_through(self, tenant: str, model_id: str) -> None:
        if not self._passed:
            # Cleared once the requests let through this turn have run their first step
            # (the next turn) and counted themselves as first reads.
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._passed.clear)
        self._passed.setdefault(tenant, set()).add(model_id)

    def _first_call_refused(
        self,
        access: Access,
        protocol: ProtocolName,
        ref: ModelRef,
        headers: Sequence[tuple[bytes, bytes]],
        starting: int,
    ) -> bytes | None:
        api_key = authorization = None
        for name, value in headers:  # the first of each, as the usual way reads them
            if name == _API_KEY and api_key is None:
                api_key = value.decode("latin-1")
            elif name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
        try:
            principal = access.from_key(api_key, authorization or "")
        except Unauthenticated:
            return None
        if (
            principal is None  # no key, or a SigV4 signature: checked with the body
            or not principal.has(Role.INVOKE)
            or not principal.covers(ref.model_id)
        ):
            return None
        refused = self._service.refusal_before_read(ref, starting)
        if refused is None:
            return None
        response = error_response(refused, protocol)
        self._metrics.invocations.labels(protocol, str(response.status_code)).inc()
        return _raw_response(response)


def _model_of(
    path: bytes, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[ProtocolName, bytes] | None:
    if b"%" in path:
        return None  # encoded: the router decodes it
    if path.startswith(_OIP):
        model, _, action = path[len(_OIP) :].rpartition(b"/")
        return ("oip", model) if action == b"infer" and model else None
    if path == b"/invocations" or (
        path.startswith(b"/endpoints/") and path.endswith(b"/invocations")
    ):
        for name, value in headers:
            if name in _TARGET_HEADERS:
                return "sagemaker", value
        return None
    if path.startswith(_SAGEMAKER_MODELS) and path.endswith(b"/invoke"):
        return "sagemaker", path[len(_SAGEMAKER_MODELS) : -len(b"/invoke")]
    return None


def _raw(error: Overloaded, protocol: ProtocolName) -> bytes:
    """The HTTP/1.1 bytes of the usual answer to ``error``, kept alive for the next request."""
    return _raw_response(error_response(error, protocol))


def _raw_response(response: Response) -> bytes:
    status = response.status_code
    head = b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode("ascii"))
    for name, value in response.raw_headers:
        head += name + b": " + value + b"\r\n"
    return head + b"\r\n" + bytes(response.body)
