"""Translate foreign store exceptions (fsspec, botocore, aiohttp, OSError) into our error tree."""

from __future__ import annotations

import socket

from tenantserve.errors import (
    LoadFailed,
    ModelNotFound,
    StoreUnavailable,
    StoreUnreachable,
    TenantServeError,
)

# botocore / aiohttp / fsspec exception class names, matched by name so that this layer
# needs neither library installed to classify what they raise.
_TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "HTTPClientError",
        "ResponseStreamingError",
        "IncompleteReadError",
        "ClientPayloadError",
        "ClientConnectionError",
        "ServerDisconnectedError",
    }
)
# No connection was made at all: the endpoint is down, wrong or unknown (DNS).
_UNREACHABLE_NAMES = frozenset(
    {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"}
)
_TIMEOUT_NAMES = frozenset({"ReadTimeoutError", "FSTimeoutError"})
# botocore's check of a body against the x-amz-checksum-* header the server sent with it.
_CORRUPT_NAMES = frozenset({"FlexibleChecksumError"})
_CREDENTIAL_NAMES = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
)
_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "AuthorizationHeaderMalformed",
        "Forbidden",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "RequestLimitExceeded",
    }
)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket"})
_FOREIGN_MODULES = frozenset({"botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "gcsfs"})


class IncompleteDownload(Exception):
    """A copy whose size or digest differs from what the store listed; retrying may help."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def translate(
    exc: Exception, subject: str, *, remote: bool
) -> tuple[TenantServeError | None, bool]:
    """Our error for a foreign one, and whether retrying may help; ``None`` if not ours to map.

    Messages name the kind of failure and the store's error code, never the exception's own
    text: that can hold endpoint URLs, bucket names and local paths.

    Args:
        exc: what fsspec, botocore, aiohttp or the OS raised.
        subject: what was being fetched, e.g. ``model acme/macros``; ``""`` for the store.
        remote: whether the store is remote (an unclassified error is then the store's fault).
    """
    chain = _chain(exc)
    found = next((kind for kind in map(_kind, chain) if kind is not None), None)
    if found is None:
        if not any(isinstance(err, OSError) or _is_foreign(err) for err in chain):
            return None, False
        found = ("broken", type(exc).__name__)
    kind, reason = found
    if kind == "denied":
        # The outer PermissionError says only "Forbidden"; the S3 code underneath says why.
        answers = [_response(err) for err in chain]
        codes = [code or (f"HTTP {status}" if status else "") for code, status in answers]
        reason = next((code for code in codes if code), reason)
    reason = _clean(reason)
    head = f"{subject}: the model store" if subject else "the model store"
    if kind == "missing":
        return ModelNotFound(f"{subject or 'the store path'} not found in the store"), False
    if kind == "denied":
        return StoreUnavailable(f"{head} refused access ({reason}); check its credentials"), False
    if kind == "unreachable":
        return StoreUnreachable(f"{head} could not be connected to ({reason})"), True
    if kind == "transient":
        message = f"{head} could not be reached ({reason}), even after retrying"
        return StoreUnavailable(message), True
    if kind == "failing":
        return StoreUnavailable(f"{head} kept failing ({reason}), even after retrying"), True
    if kind == "corrupt":
        message = f"{head} sent a copy that failed its check ({reason}), even after retrying"
        return StoreUnavailable(message), True
    if kind == "refused" or remote:
        return StoreUnavailable(f"{head} failed ({reason})"), False
    return LoadFailed(f"{subject or 'the store'} could not be read ({reason})"), False


def _kind(err: BaseException) -> tuple[str, str] | None:
    names = {cls.__name__ for cls in type(err).__mro__}
    code, status = _response(err)
    if isinstance(err, FileNotFoundError | NotADirectoryError) or code in _MISSING_CODES:
        return "missing", code
    if status == 404:
        return "missing", code
    if isinstance(err, PermissionError) or names & _CREDENTIAL_NAMES:
        return "denied", code or type(err).__name__
    if code in _DENIED_CODES or status in (401, 403):
        return "denied", code or f"HTTP {status}"
    if isinstance(err, IncompleteDownload):
        return "corrupt", err.reason
    if names & _CORRUPT_NAMES:
        return "corrupt", "checksum mismatch"
    if names & _UNREACHABLE_NAMES or isinstance(err, ConnectionRefusedError | socket.gaierror):
        return "unreachable", _unreachable_reason(err)
    if names & _TIMEOUT_NAMES or isinstance(err, TimeoutError):
        # aiohttp's read timeout reaches us as fsspec's FSTimeoutError: say what happened.
        return "transient", "timed out"
    if names & _TRANSIENT_NAMES or isinstance(err, ConnectionError):
        return "transient", type(err).__name__
    if code in _TRANSIENT_CODES or (status or 0) >= 500:
        return "failing", code or f"HTTP {status}"
    if code or status:
        return "refused", code or f"HTTP {status}"
    return None


def _unreachable_reason(err: BaseException) -> str:
    if "Timeout" in type(err).__name__:
        return "connect timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return "unknown host"
    return type(err).__name__


def _response(err: BaseException) -> tuple[str, int | None]:
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return "", None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(response.get("Error", {}).get("Code") or "")
    # A HEAD has no body, so botocore reports the bare status ("403") as the code.
    if code.isdigit():
        code, status = "", int(code)
    return code, status if isinstance(status, int) else None


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_foreign(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in _FOREIGN_MODULES


def _clean(reason: str) -> str:
    # Server-supplied codes are shown to callers: keep them short and plain.
    return "".join(ch for ch in reason if ch.isalnum() or ch in " ._-")[:40] or "unknown error"
