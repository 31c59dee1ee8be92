"""TenantServeError → HTTP status, headers and JSON body, or gRPC status and trailing metadata:
the one table of status codes, every protocol's column side by side."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from tenantserve.errors import (
    Forbidden,
    InsufficientMemory,
    InvalidRequest,
    LoadFailed,
    MissingExtra,
    ModelAlreadyLoaded,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    PredictFailed,
    PredictTimedOut,
    StoreUnavailable,
    TenantLimitExceeded,
    TenantServeError,
    Unauthenticated,
)

ProtocolName = Literal["oip", "sagemaker"]
Handler = Callable[[Request], Awaitable[Response]]

_log = logging.getLogger(__name__)

# A status code no server sends on purpose: the client went away, nothing is delivered, but the
# invocation is still counted under a code that says so (nginx's "client closed request").
CLIENT_CLOSED = 499


@dataclass(frozen=True, slots=True)
class _Rule:
    oip_status: int
    sagemaker_status: int
    # botocore's rest-json parser picks the exception class from ``x-amzn-ErrorType``, so this
    # names the sagemaker-runtime error shape boto3 should raise (service-2.json of 2017-05-13).
    sagemaker_code: str
    # A grpc.StatusCode name (this module stays free of grpc); the OIP gRPC edge answers with it.
    grpc_code: str


# Looked up along the exception's MRO, so a subclass added later (say a tenant limit under
# Overloaded) answers like its parent until it gets its own row.
_RULES: dict[type[TenantServeError], _Rule] = {
    InvalidRequest: _Rule(400, 400, "ValidationError", "INVALID_ARGUMENT"),  # incl. InvalidInput
    # gRPC's own code for a message over the receive limit (grpc answers that one itself).
    PayloadTooLarge: _Rule(413, 413, "ValidationError", "RESOURCE_EXHAUSTED"),
    # AWS answers both with 403; we keep 401 (who are you?) apart from 403 (not yours), and
    # the codes are the ones AWS services use, so boto3 raises a ClientError it names.
    Unauthenticated: _Rule(401, 401, "UnrecognizedClientException", "UNAUTHENTICATED"),
    Forbidden: _Rule(403, 403, "AccessDeniedException", "PERMISSION_DENIED"),
    ModelNotFound: _Rule(404, 404, "ValidationError", "NOT_FOUND"),
    ModelAlreadyLoaded: _Rule(409, 409, "ValidationError", "ALREADY_EXISTS"),
    # SageMaker's "model is still loading" is 429 ModelNotReadyException (boto3 retries it);
    # OIP clients expect 503 for a temporarily unavailable model.
    ModelNotReady: _Rule(503, 429, "ModelNotReadyException", "UNAVAILABLE"),
    Overloaded: _Rule(503, 503, "ServiceUnavailable", "UNAVAILABLE"),
    # 429 on both: the tenant, not the server, is over its share. botocore's standard and
    # adaptive retry modes back off on ThrottlingException. gRPC's quota code, with the hint.
    TenantLimitExceeded: _Rule(429, 429, "ThrottlingException", "RESOURCE_EXHAUSTED"),
    InsufficientMemory: _Rule(507, 507, "InsufficientMemory", "RESOURCE_EXHAUSTED"),
    # An artifact that will not load fails the same way on a retry; a store that does not answer
    # may answer later: UNAVAILABLE, which gRPC clients treat as retryable.
    LoadFailed: _Rule(500, 500, "InternalFailure", "INTERNAL"),
    # A native artifact whose converter this server was installed without (docs/frameworks.md):
    # the server cannot do it, not a fault of the file; the message names the extra.
    MissingExtra: _Rule(501, 501, "InternalFailure", "UNIMPLEMENTED"),
    StoreUnavailable: _Rule(503, 503, "ServiceUnavailable", "UNAVAILABLE"),
    # SageMaker reports an error raised inside the model as 424 ModelError carrying the
    # original status and message, and boto3 does not retry it (a retry would fail the same).
    PredictFailed: _Rule(500, 424, "ModelError", "INTERNAL"),
    # The model, not the server, took too long; SageMaker reports an invocation timeout as a
    # ModelError too.
    PredictTimedOut: _Rule(504, 424, "ModelError", "DEADLINE_EXCEEDED"),
}
_UNEXPECTED = _Rule(500, 500, "InternalFailure", "INTERNAL")
_DEFAULT_RETRY_AFTER_S = 1.0


def guarded(handler: Handler, protocol: ProtocolName) -> Handler:
    """``handler`` with every exception answered through :func:`error_response` (the routes
    that are not inferences; those are answered by protocols/endpoint.py's own sequence)."""

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


def error_response(exc: Exception, protocol: ProtocolName) -> Response:
    """The HTTP answer for ``exc``; unexpected exceptions are logged and answered generically."""
    rule = _rule_for(exc)
    message = _message(exc, protocol)
    status = rule.oip_status if protocol == "oip" else rule.sagemaker_status
    body: dict[str, object] = {"error": message}
    headers: dict[str, str] = {}
    if protocol == "sagemaker":
        headers["x-amzn-ErrorType"] = rule.sagemaker_code
        body["message"] = message  # botocore reads the message from ``message``
        if status == 424:
            body["OriginalStatusCode"] = 500
            body["OriginalMessage"] = message
    if status in (429, 503):
        headers["Retry-After"] = retry_after(getattr(exc, "retry_after_s", _DEFAULT_RETRY_AFTER_S))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="tenantserve"'
    if status == 413:
        # The rest of an oversized body is never read; the connection cannot be reused.
        headers["Connection"] = "close"
    return json_response(body, status, headers)


@dataclass(frozen=True, slots=True)
class GrpcStatus:
    """How a gRPC call ends on an error: a ``grpc.StatusCode`` name, the message (the one HTTP
    sends), and trailing metadata: ``retry-after`` (seconds, as HTTP's header) and
    ``grpc-retry-pushback-ms`` (what gRPC's client retry policies honour) where HTTP says
    Retry-After."""

    code: str
    message: str
    trailing: tuple[tuple[str, str], ...] = ()


def grpc_status(exc: Exception) -> GrpcStatus:
    """The gRPC answer for ``exc``; unexpected exceptions are logged and answered generically."""
    rule = _rule_for(exc)
    message = _message(exc, "grpc")
    if rule.oip_status not in (429, 503):
        return GrpcStatus(rule.grpc_code, message)
    seconds = retry_after(getattr(exc, "retry_after_s", _DEFAULT_RETRY_AFTER_S))
    hint = (("retry-after", seconds), ("grpc-retry-pushback-ms", f"{int(seconds) * 1000}"))
    return GrpcStatus(rule.grpc_code, message, hint)


def retry_after(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; round up and never say 0 (an immediate retry storm)."""
    try:
        return str(max(1, math.ceil(seconds)))
    except (ValueError, OverflowError):
        return "1"


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised with orjson (numpy arrays allowed)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _message(exc: Exception, protocol: str) -> str:
    if isinstance(exc, TenantServeError):
        return str(exc) or type(exc).__name__
    # Never show the caller an internal message: it may hold paths, bucket names or keys.
    _log.error("unexpected error answering a %s request", protocol, exc_info=exc)
    return "internal server error"


def _rule_for(exc: Exception) -> _Rule:
    for cls in type(exc).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return _UNEXPECTED
