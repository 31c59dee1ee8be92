"""Shedder: a request the server would refuse anyway, refused before it becomes a request.

Past capacity, a refusal that costs as much as an answer halves what the server can answer
(a soak at twice capacity measured a fifth of capacity answered). When every admission slot
is taken and the queue is full with no longer queue to shed for this tenant, the answer is
known from the request line and one header: the HTTP protocol asks here right after the
head is parsed and writes a canned 503 (Retry-After) with no ASGI task, no Request, no
router. Anything unclear (an encoded path, a bad id) goes the usual way, which refuses
it the same (only slower) or serves it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from tenantserve.errors import InvalidModelId, Overloaded
from tenantserve.protocols.errors import ProtocolName, error_response
from tenantserve.types import ModelRef

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

_OIP = b"/v2/models/"
_SAGEMAKER_MODELS = b"/models/"
_TARGET_HEADERS = (b"x-amzn-sagemaker-target-model", b"x-amzn-target-model")


class Shedder:
    """``__call__(method, target, headers)`` → canned response bytes, or ``None`` to serve."""

    def __init__(self, service: InferenceService, metrics: Metrics) -> None:
        self._service = service
        self._metrics = metrics
        busy = Overloaded("server is at capacity; retry shortly", retry_after_s=1.0)
        self._answers = {protocol: _raw(busy, protocol) for protocol in ("oip", "sagemaker")}

    def __call__(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bytes | None:
        if method != b"POST":
            return None
        found = _model_of(target.split(b"?", 1)[0], headers)
        if found is None:
            return None
        protocol, raw = found
        try:
            model_id = ModelRef.parse(raw.decode("ascii")).model_id  # its tenant is what counts
        except (InvalidModelId, UnicodeDecodeError):
            return None
        if not self._service.refuses_at_once(model_id):
            return None
        answer = self._answers[protocol]
        self._metrics.invocations.labels(protocol, "503").inc()
        return answer


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
    response = error_response(error, protocol)
    head = b"HTTP/1.1 %d Service Unavailable\r\n" % response.status_code
    for name, value in response.raw_headers:
        head += name + b": " + value + b"\r\n"
    return head + b"\r\n" + bytes(response.body)
