"""AWS Signature Version 4, checked by the server, so boto3's sagemaker-runtime works unchanged.

The signature is recomputed with botocore's own signer from what arrived: the method, the path
exactly as sent (``raw_path``: botocore signs its already-escaped path), the query, the headers
the client listed as signed (``host`` among them) and the body. Requests older or newer than
:data:`MAX_SKEW_S` are refused, as AWS does, so a captured request cannot be replayed later.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tenantserve.errors import Unauthenticated

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sagemaker"
MAX_SKEW_S = 15 * 60
# ASCII: ``\d`` and ``\s`` would otherwise take any Unicode digit or space.
_HEADER = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*",
    re.ASCII,
)
_CREDENTIAL = re.compile(
    r"(?P<key_id>[A-Za-z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)"
    r"/aws4_request",
    re.ASCII,
)
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z", re.ASCII)
# The host that is signed is the Host header (always among the signed headers); the URL's host
# is never read, and a hostile Host such as "[::1" would make urlsplit raise.
_URL_HOST = "sigv4.invalid"


@dataclass(frozen=True, slots=True)
class Signed:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 …`` header."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse(authorization: str) -> Signed:
    """Split a SigV4 ``Authorization`` value.

    Raises:
        Unauthenticated: not a well-formed SigV4 header for this service.
    """
    header = _HEADER.fullmatch(authorization.strip())
    credential = _CREDENTIAL.fullmatch(header["credential"]) if header else None
    if header is None or credential is None:
        raise Unauthenticated("malformed AWS4-HMAC-SHA256 Authorization header")
    if credential["service"] != SERVICE:
        raise Unauthenticated(f"SigV4 credential scope must name the {SERVICE!r} service")
    signed = tuple(header["signed"].split(";"))
    if "host" not in signed:
        raise Unauthenticated("SigV4 signed headers must include host")
    return Signed(
        credential["key_id"], credential["date"], credential["region"], credential["service"],
        signed, header["signature"],
    )  # fmt: skip


def verify(
    signed: Signed,
    *,
    secret_access_key: str,
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    now_s: float | None = None,
) -> None:
    """Check ``signed`` against the request as received.

    Args:
        headers: every header as received (lower-case names, repeated names kept).
    Raises:
        Unauthenticated: a stale or future date, a body that does not match its declared
            hash, or a signature that does not match.
    """
    from botocore.auth import SigV4Auth  # botocore comes with s3fs; imported on first use
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    received: dict[str, list[str]] = {}
    for name, value in headers:
        received.setdefault(name.lower(), []).append(value)
    amz_date = (received.get("x-amz-date") or [""])[0]
    if not _AMZ_DATE.fullmatch(amz_date) or amz_date[:8] != signed.date:
        raise Unauthenticated("SigV4 requests need an X-Amz-Date matching the credential date")
    try:
        sent_s = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:  # the right shape, not a date: 20241399T256199Z
        raise Unauthenticated("SigV4 X-Amz-Date is not a valid date (YYYYMMDDTHHMMSSZ)") from None
    if abs((time.time() if now_s is None else now_s) - sent_s) > MAX_SKEW_S:
        raise Unauthenticated("request signature is older or newer than 15 minutes; check clocks")
    declared = received.get("x-amz-content-sha256")
    if declared is not None and declared[0] != hashlib.sha256(body).hexdigest():
        raise Unauthenticated("X-Amz-Content-SHA256 does not match the body")

    if not raw_path.startswith(b"/"):  # else it would run on into the URL's host
        raise Unauthenticated("SigV4 requests need a path that starts with '/'")
    url = f"http://{_URL_HOST}{raw_path.decode('latin-1')}"
    if query:
        url += "?" + query.decode("latin-1")
    request = AWSRequest(method=method, url=url, data=body)
    for name in signed.signed_headers:
        for value in received.get(name, []):
            request.headers[name] = value  # an HTTPMessage: assignment appends a value
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(signed.access_key_id, secret_access_key), signed.service, signed.region
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signed.signature):
        raise Unauthenticated("request signature does not match; check the secret access key")
