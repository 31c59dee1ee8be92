"""Read a request body under a hard byte cap, refusing with 413 as soon as it is exceeded."""

from __future__ import annotations

import zlib

from starlette.requests import Request

from tenantserve.errors import InvalidRequest, PayloadTooLarge

# zlib's window bits: 16 + MAX_WBITS reads a gzip wrapper, MAX_WBITS a zlib ("deflate") one.
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, never holding more than ``max_bytes`` of it.

    A declared ``Content-Length`` over the cap is refused before a byte is read; a chunked or
    lying body is refused at the first chunk that crosses the cap. A ``Content-Encoding`` of
    gzip or deflate (tritonclient can compress requests) is inflated under the same cap, so a
    small compressed bomb cannot expand past it.

    Raises:
        PayloadTooLarge: the body (or its inflated form) is over ``max_bytes``.
        InvalidRequest: a malformed ``Content-Length``, an unknown or corrupt encoding.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise InvalidRequest("Content-Length is not a number")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(_too_large(max_bytes))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflate = None
    elif encoding in _WBITS:
        inflate = zlib.decompressobj(_WBITS[encoding])
    else:
        raise InvalidRequest(f"unsupported Content-Encoding {encoding[:32]!r}")

    body = bytearray()
    async for chunk in request.stream():
        if inflate is None:
            body += chunk
        else:
            try:
                # max_length bounds the output of this one call: one byte past the cap is
                # enough to know the body is too large.
                body += inflate.decompress(chunk, max_bytes + 1 - len(body))
            except zlib.error as exc:
                raise InvalidRequest(f"request body is not valid {encoding}") from exc
        if len(body) > max_bytes:
            raise PayloadTooLarge(_too_large(max_bytes))
    if inflate is not None and not inflate.eof:
        raise InvalidRequest(f"request body is a truncated {encoding} stream")
    return bytes(body)


def _too_large(max_bytes: int) -> str:
    return f"request body is larger than the limit of {max_bytes} bytes"
