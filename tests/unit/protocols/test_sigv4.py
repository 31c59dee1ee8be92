"""SigV4 parsing and checking: anything a client sends is either accepted or a clear 401.

A ValueError from deep inside (a date of the right shape that is no date, a Host that
urlsplit cannot parse) would be answered 500 with a traceback in the log, before the caller
is even authenticated; these checks fuzz every field the server reads.
"""

from __future__ import annotations

import calendar
import os
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantserve.errors import Unauthenticated
from tenantserve.protocols import sigv4

KEY_ID = "AKIAACME0001"
NEW_YEAR_2024 = 1704067200.0
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _authorization(date: str, *, credential: str | None = None, signed: str = "host") -> str:
    scope = credential or f"{KEY_ID}/{date}/eu-west-1/sagemaker/aws4_request"
    return f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders={signed}, Signature={'0' * 64}"


def _verify(
    signed: sigv4.Signed,
    headers: list[tuple[str, str]],
    now_s: float | None = None,
    **request: bytes,
) -> None:
    sigv4.verify(
        signed,
        secret_access_key="secret",
        method="POST",
        raw_path=request.get("raw_path", b"/invocations"),
        query=request.get("query", b""),
        headers=headers,
        body=b"",
        now_s=now_s,
    )


@pytest.mark.parametrize(
    "amz_date", ["20241399T120000Z", "20240230T120000Z", "20240101T256199Z", "00000000T000000Z"]
)
def test_a_date_of_the_right_shape_that_is_no_date_is_refused(amz_date: str) -> None:
    signed = sigv4.parse(_authorization(amz_date[:8]))
    with pytest.raises(Unauthenticated, match=r"X-Amz-Date is not a valid date"):
        _verify(signed, [("host", "test"), ("x-amz-date", amz_date)])


@pytest.mark.parametrize(
    "credential",
    [
        f"{KEY_ID}/20240101/eu-west-1/sagemaker",  # no aws4_request
        f"{KEY_ID}/20240101/sagemaker/aws4_request",  # no region
        f"{KEY_ID}//eu-west-1/sagemaker/aws4_request",  # empty date
        f"{KEY_ID}/٢٠٢٤٠١٠١/eu-west-1/sagemaker/aws4_request",  # digits, not ASCII ones
        "/20240101/eu-west-1/sagemaker/aws4_request",  # no key id
        f"{KEY_ID}/20240101/eu-west-1/s3/aws4_request",  # another service
    ],
)
def test_a_malformed_credential_scope_is_refused(credential: str) -> None:
    with pytest.raises(Unauthenticated, match=r"AWS4-HMAC-SHA256|credential scope"):
        sigv4.parse(_authorization("20240101", credential=credential))


@pytest.mark.parametrize(
    ("host", "raw_path"),
    [("[::1", b"/i"), ("a:b:c", b"/i"), ("x]y", b"/i"), ("\x00", b"/i"), ("h", b"["), ("h", b"")],
)
def test_a_host_or_path_urlsplit_cannot_parse_is_refused(host: str, raw_path: bytes) -> None:
    signed = sigv4.parse(_authorization("20240101", signed="host;x-amz-date"))
    headers = [("host", host), ("x-amz-date", "20240101T000000Z")]
    with pytest.raises(Unauthenticated, match=r"signature does not match|path that starts"):
        _verify(signed, headers, NEW_YEAR_2024, raw_path=raw_path)


@FUZZ
@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda head, parts: head + ", ".join(parts),
            st.sampled_from(["AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA256\t"]),
            st.lists(
                st.one_of(
                    st.from_regex(r"Credential=[^,]*", fullmatch=True),
                    st.from_regex(r"SignedHeaders=[a-z;-]*", fullmatch=True),
                    st.from_regex(r"Signature=[0-9a-f]{0,70}", fullmatch=True),
                    st.text(max_size=30),
                ),
                max_size=5,
            ),
        ),
    )
)
def test_any_authorization_value_parses_or_is_refused(value: str) -> None:
    try:
        signed = sigv4.parse(value)
    except Unauthenticated:
        return
    assert signed.service == sigv4.SERVICE
    assert "host" in signed.signed_headers


_DATES = st.one_of(
    st.just("20240101T000000Z"),
    st.from_regex(r"[0-9]{8}T[0-9]{6}Z", fullmatch=True),
    st.text(max_size=20),
)


@FUZZ
@given(
    amz_date=_DATES,
    host=st.text(max_size=30),
    sha=st.one_of(st.none(), st.text(max_size=70)),
    raw_path=st.binary(max_size=30),
    query=st.binary(max_size=30),
)
def test_any_signed_request_is_checked_or_refused(
    amz_date: str, host: str, sha: str | None, raw_path: bytes, query: bytes
) -> None:
    # The credential date follows X-Amz-Date wherever it can, so the date itself is reached.
    date = amz_date[:8] if re.fullmatch(r"[0-9]{8}", amz_date[:8]) else "20240101"
    signed = sigv4.parse(_authorization(date, signed="host;x-amz-date"))
    headers = [("host", host), ("x-amz-date", amz_date)]
    if sha is not None:
        headers.append(("x-amz-content-sha256", sha))
    # A good date is "now", so the check goes on to the signature (zeros: it never matches).
    try:
        now_s: float | None = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        now_s = None
    with pytest.raises(Unauthenticated):
        _verify(signed, headers, now_s, raw_path=raw_path, query=query)
