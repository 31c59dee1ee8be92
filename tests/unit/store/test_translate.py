"""translate(): each foreign store error becomes our error, says whether a retry may help, and
names the cause without the foreign message (which can hold URLs, buckets and keys)."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    FlexibleChecksumError,
    ReadTimeoutError,
)
from fsspec.exceptions import FSTimeoutError

from tenantserve.errors import LoadFailed, ModelNotFound, StoreUnavailable
from tenantserve.store.translate import IncompleteDownload, translate

ENDPOINT = "http://secret-bucket.internal:9000/?X-Amz-Credential=AKIAEXAMPLE"


def _client_error(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


def _wrapped(cause: BaseException) -> OSError:
    # What s3fs raises for a code it has no exception for: an EIO OSError caused by the original.
    outer = OSError(errno.EIO, f"failed at {ENDPOINT}")
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (_client_error(500, "InternalError"), "kept failing (InternalError), even after retrying"),
        (_client_error(503, "SlowDown"), "kept failing (SlowDown)"),
        (_wrapped(_client_error(503, "ServiceUnavailable")), "kept failing (ServiceUnavailable)"),
        (_client_error(502, ""), "kept failing (HTTP 502)"),
        (ReadTimeoutError(endpoint_url=ENDPOINT), "could not be reached (timed out)"),
        (FSTimeoutError(), "could not be reached (timed out)"),
        (
            ConnectTimeoutError(endpoint_url=ENDPOINT),
            "could not be connected to (connect timed out)",
        ),
        (EndpointConnectionError(endpoint_url=ENDPOINT), "(EndpointConnectionError)"),
        (ConnectionResetError(104, "reset by peer"), "(ConnectionResetError)"),
        (
            FlexibleChecksumError(error_msg=f"Expected checksum X did not match at {ENDPOINT}"),
            "sent a copy that failed its check (checksum mismatch), even after retrying",
        ),
        (
            IncompleteDownload("MD5 differs from the ETag"),
            "sent a copy that failed its check (MD5 differs from the ETag)",
        ),
    ],
)
def test_transient_faults_are_retryable_and_name_their_cause(exc: Exception, message: str) -> None:
    error, transient = translate(exc, "model acme/m", remote=True)
    assert isinstance(error, StoreUnavailable)
    assert transient
    assert str(error).startswith("model acme/m: the model store ")
    assert message in str(error)
    for leaked in ("secret-bucket", "AKIAEXAMPLE", "9000"):
        assert leaked not in str(error)


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        (_client_error(403, "SignatureDoesNotMatch"), StoreUnavailable, "refused access"),
        (_wrapped(PermissionError("Forbidden")), StoreUnavailable, "refused access"),
        (_client_error(404, "NoSuchKey"), ModelNotFound, "not found"),
        (_client_error(400, "InvalidArgument"), StoreUnavailable, "failed (InvalidArgument)"),
    ],
)
def test_lasting_faults_are_not_retried(
    exc: Exception, kind: type[Exception], message: str
) -> None:
    error, transient = translate(exc, "model acme/m", remote=True)
    assert isinstance(error, kind)
    assert not transient
    assert message in str(error)


def test_local_read_errors_are_load_failures_and_bugs_are_not_ours() -> None:
    error, transient = translate(IsADirectoryError(21, "/srv/models/x"), "model a/b", remote=False)
    assert isinstance(error, LoadFailed)
    assert not isinstance(error, StoreUnavailable)
    assert not transient
    assert "/srv" not in str(error)
    assert translate(TypeError("a bug"), "model a/b", remote=True) == (None, False)
