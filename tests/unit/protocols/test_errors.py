"""One status table: every TenantServeError's status, headers and body, per protocol."""

from __future__ import annotations

import logging

import orjson
import pytest

from tenantserve.errors import (
    Forbidden,
    InsufficientMemory,
    InvalidInput,
    InvalidModelId,
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
    Unauthenticated,
)
from tenantserve.protocols import errors
from tenantserve.protocols.errors import ProtocolName, error_response, grpc_status, retry_after


@pytest.mark.parametrize(
    ("error", "oip", "sagemaker", "code"),
    [
        (InvalidModelId("bad id"), 400, 400, "ValidationError"),
        (InvalidInput("input 'x': bad"), 400, 400, "ValidationError"),
        (InvalidRequest("bad body"), 400, 400, "ValidationError"),
        (PayloadTooLarge("too big"), 413, 413, "ValidationError"),
        (ModelNotFound("no such model"), 404, 404, "ValidationError"),
        (ModelAlreadyLoaded("loaded"), 409, 409, "ValidationError"),
        (ModelNotReady("loading"), 503, 429, "ModelNotReadyException"),
        (Overloaded("busy"), 503, 503, "ServiceUnavailable"),
        (InsufficientMemory("too large for the budget"), 507, 507, "InsufficientMemory"),
        (LoadFailed("corrupt artifact"), 500, 500, "InternalFailure"),
        (MissingExtra("needs tenantserve[xgboost]"), 501, 501, "InternalFailure"),
        (StoreUnavailable("store down"), 503, 503, "ServiceUnavailable"),
        (PredictFailed("model raised"), 500, 424, "ModelError"),
    ],
)
def test_status_per_protocol(error: Exception, oip: int, sagemaker: int, code: str) -> None:
    oip_response = error_response(error, "oip")
    sm_response = error_response(error, "sagemaker")
    assert oip_response.status_code == oip
    assert sm_response.status_code == sagemaker
    assert orjson.loads(oip_response.body) == {"error": str(error)}
    assert orjson.loads(sm_response.body)["error"] == str(error)
    assert orjson.loads(sm_response.body)["message"] == str(error)  # botocore's field
    assert sm_response.headers["x-amzn-ErrorType"] == code
    assert "x-amzn-ErrorType" not in oip_response.headers
    assert oip_response.media_type == "application/json"


@pytest.mark.parametrize("protocol", ["oip", "sagemaker"])
@pytest.mark.parametrize(
    "error",
    [ModelNotReady("loading"), Overloaded("busy"), StoreUnavailable("down")],
)
def test_every_429_and_503_carries_retry_after(error: Exception, protocol: ProtocolName) -> None:
    response = error_response(error, protocol)
    assert response.status_code in (429, 503)
    assert int(response.headers["Retry-After"]) >= 1


def test_retry_after_rounds_the_error_hint_up() -> None:
    assert (
        error_response(Overloaded("busy", retry_after_s=2.2), "oip").headers["Retry-After"] == "3"
    )
    response = error_response(ModelNotReady("loading", retry_after_s=0.01), "sagemaker")
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.0, "1"), (-5.0, "1"), (4.0, "4"), (float("nan"), "1"), (float("inf"), "1")],
)
def test_retry_after_is_a_positive_whole_number(seconds: float, header: str) -> None:
    assert retry_after(seconds) == header


def test_other_statuses_carry_no_retry_after() -> None:
    assert "Retry-After" not in error_response(InsufficientMemory("no room"), "oip").headers
    assert "Retry-After" not in error_response(ModelNotFound("gone"), "sagemaker").headers


def test_model_error_carries_the_original_status_for_sagemaker() -> None:
    body = orjson.loads(error_response(PredictFailed("shape mismatch"), "sagemaker").body)
    assert body["OriginalStatusCode"] == 500
    assert body["OriginalMessage"] == "shape mismatch"


def test_payload_too_large_closes_the_connection() -> None:
    assert error_response(PayloadTooLarge("big"), "oip").headers["Connection"] == "close"


def test_a_subclass_answers_like_its_parent() -> None:
    class TenantLimitExceeded(Overloaded):
        pass

    response = error_response(TenantLimitExceeded("tenant acme is over its limit"), "oip")
    assert response.status_code == 503
    assert "Retry-After" in response.headers


@pytest.mark.parametrize("protocol", ["oip", "sagemaker"])
def test_unexpected_errors_are_generic_and_logged(
    protocol: ProtocolName, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "open('/srv/models/acme/secret-key.onnx') failed: AKIAXXXXXXXX"
    with caplog.at_level(logging.ERROR, logger="tenantserve.protocols.errors"):
        response = error_response(RuntimeError(secret), protocol)
    assert response.status_code == 500
    assert b"secret" not in response.body
    assert b"/srv" not in response.body
    assert orjson.loads(response.body)["error"] == "internal server error"
    assert any(record.exc_info for record in caplog.records), "traceback must be logged"


@pytest.mark.parametrize(
    ("error", "code", "retry"),
    [
        (InvalidInput("input 'x': bad"), "INVALID_ARGUMENT", False),
        (PayloadTooLarge("too big"), "RESOURCE_EXHAUSTED", False),
        (Unauthenticated("API key not recognised"), "UNAUTHENTICATED", False),
        (Forbidden("this key may not use model acme/m"), "PERMISSION_DENIED", False),
        (ModelNotFound("no such model"), "NOT_FOUND", False),
        (ModelAlreadyLoaded("loaded"), "ALREADY_EXISTS", False),
        (ModelNotReady("loading"), "UNAVAILABLE", True),
        (Overloaded("busy"), "UNAVAILABLE", True),
        (TenantLimitExceeded("tenant acme is over its rate"), "RESOURCE_EXHAUSTED", True),
        (InsufficientMemory("too large for the budget"), "RESOURCE_EXHAUSTED", False),
        (LoadFailed("corrupt artifact"), "INTERNAL", False),
        (MissingExtra("needs tenantserve[xgboost]"), "UNIMPLEMENTED", False),
        (StoreUnavailable("store down"), "UNAVAILABLE", True),
        (PredictFailed("model raised"), "INTERNAL", False),
        (PredictTimedOut("ran past 60s"), "DEADLINE_EXCEEDED", False),
    ],
)
def test_grpc_status_per_error(error: Exception, code: str, retry: bool) -> None:
    status = grpc_status(error)
    assert (status.code, status.message) == (code, str(error))  # HTTP's message
    assert bool(status.trailing) == retry
    # Retry hints on gRPC exactly where HTTP sends Retry-After.
    assert retry == ("Retry-After" in error_response(error, "oip").headers)


def test_grpc_retry_hint_is_in_seconds_and_pushback_milliseconds() -> None:
    status = grpc_status(Overloaded("busy", retry_after_s=2.2))
    assert dict(status.trailing) == {"retry-after": "3", "grpc-retry-pushback-ms": "3000"}


def test_every_grpc_code_in_the_table_is_a_grpc_status_code() -> None:
    import grpc

    rules = [*errors._RULES.values(), errors._UNEXPECTED]
    assert all(rule.grpc_code in grpc.StatusCode.__members__ for rule in rules)


def test_unexpected_errors_are_generic_on_grpc_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="tenantserve.protocols.errors"):
        status = grpc_status(RuntimeError("open('/srv/models/acme/secret-key.onnx') failed"))
    assert (status.code, status.message) == ("INTERNAL", "internal server error")
    assert any(record.exc_info for record in caplog.records), "traceback must be logged"
