"""TenantServeError → HTTP status, headers and JSON body: the one table of status codes."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.responses import Response

from tenantserve.errors import (
    Forbidden,
    InsufficientMemory,
    InvalidRequest,
    LoadFailed,
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


# Looked up along the exception's MRO, so a subclass added later (say a tenant limit under
# Overloaded) answers like its parent until it gets its own row.
_RULES: dict[type[TenantServeError], _Rule] = {
    InvalidRequest: _Rule(400, 400, "ValidationError"),  # incl. InvalidModelId, InvalidInput
    PayloadTooLarge: _Rule(413, 413, "ValidationError"),
    # AWS answers both with 403; we keep 401 (who are you?) apart from 403 (not yours), and
    # the codes are the ones AWS services use, so boto3 raises a ClientError it names.
    Unauthenticated: _Rule(401, 401, "UnrecognizedClientException"),
    Forbidden: _Rule(403, 403, "AccessDeniedException"),
    ModelNotFound: _Rule(404, 404, "ValidationError"),
    ModelAlreadyLoaded: _Rule(409, 409, "ValidationError"),
    # SageMaker's "model is still loading" is 429 ModelNotReadyException (boto3 retries it);
    # OIP clients expect 503 for a temporarily unavailable model.
    ModelNotReady: _Rule(503, 429, "ModelNotReadyException"),
    Overloaded: _Rule(503, 503, "ServiceUnavailable"),
    # 429 on both: the tenant, not the server, is over its share. botocore's standard and
    # adaptive retry modes back off on ThrottlingException.
    TenantLimitExceeded: _Rule(429, 429, "ThrottlingException"),
    InsufficientMemory: _Rule(507, 507, "InsufficientMemory"),
    LoadFailed: _Rule(500, 500, "InternalFailure"),
    StoreUnavailable: _Rule(503, 503, "ServiceUnavailable"),
    # SageMaker reports an error raised inside the model as 424 ModelError carrying the
    # original status and message, and boto3 does not retry it (a retry would fail the same).
    PredictFailed: _Rule(500, 424, "ModelError"),
    # The model, not the server, took too long; SageMaker reports an invocation timeout as a
    # ModelError too.
    PredictTimedOut: _Rule(504, 424, "ModelError"),
}
_UNEXPECTED = _Rule(500, 500, "InternalFailure")
_DEFAULT_RETRY_AFTER_S = 1.0


def error_response(exc: Exception, protocol: ProtocolName) -> Response:
    """The HTTP answer for ``exc``; unexpected exceptions are logged and answered generically."""
    rule = _rule_for(exc)
    if isinstance(exc, TenantServeError):
        message = str(exc) or type(exc).__name__
    else:
        # Never show the caller an internal message: it may hold paths, bucket names or keys.
        _log.error("unexpected error answering a %s request", protocol, exc_info=exc)
        message = "internal server error"
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


def _rule_for(exc: Exception) -> _Rule:
    for cls in type(exc).__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return _UNEXPECTED
