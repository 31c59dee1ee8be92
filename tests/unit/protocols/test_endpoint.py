"""The capped body reader: refuses early, never holds more than the cap, inflates safely."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable

import pytest
from starlette.requests import Request
from starlette.types import Message

from tenantserve.errors import InvalidRequest, PayloadTooLarge
from tenantserve.protocols.endpoint import read_body


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Upload:
    """An ASGI request whose body arrives in the given chunks; counts what was pulled."""

    def __init__(self, chunks: Iterable[bytes], headers: dict[str, str] | None = None) -> None:
        self._chunks = list(chunks)
        self.pulled = 0
        raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {"type": "http", "method": "POST", "path": "/", "headers": raw}
        self.request = Request(scope, self._receive)

    async def _receive(self) -> Message:
        index = self.pulled
        self.pulled += 1
        more = index + 1 < len(self._chunks)
        body = self._chunks[index] if index < len(self._chunks) else b""
        return {"type": "http.request", "body": body, "more_body": more}


@pytest.mark.anyio
async def test_reads_a_body_in_chunks() -> None:
    upload = _Upload([b"ab", b"", b"cd", b"e"])
    assert await read_body(upload.request, 10) == b"abcde"


@pytest.mark.anyio
async def test_a_body_exactly_at_the_cap_is_accepted() -> None:
    upload = _Upload([b"x" * 8], {"content-length": "8"})
    assert await read_body(upload.request, 8) == b"x" * 8


@pytest.mark.anyio
async def test_declared_length_over_the_cap_is_refused_before_reading() -> None:
    upload = _Upload([b"x" * 100], {"content-length": "100"})
    with pytest.raises(PayloadTooLarge):
        await read_body(upload.request, 99)
    assert upload.pulled == 0


@pytest.mark.anyio
async def test_a_streamed_body_is_refused_at_the_chunk_that_crosses_the_cap() -> None:
    # 100 MB announced by nothing: chunked, 1 KiB at a time, cap 4 KiB.
    upload = _Upload(b"x" * 1024 for _ in range(100_000))
    with pytest.raises(PayloadTooLarge):
        await read_body(upload.request, 4096)
    assert upload.pulled == 5


@pytest.mark.anyio
async def test_a_lying_content_length_does_not_lift_the_cap() -> None:
    upload = _Upload([b"x" * 10, b"x" * 10], {"content-length": "5"})
    with pytest.raises(PayloadTooLarge):
        await read_body(upload.request, 15)


@pytest.mark.anyio
async def test_thousands_of_one_byte_chunks_are_accepted() -> None:
    upload = _Upload([b"y"] * 5000)
    assert await read_body(upload.request, 6000) == b"y" * 5000


@pytest.mark.anyio
async def test_thousands_of_one_byte_chunks_over_the_cap_are_refused() -> None:
    upload = _Upload([b"y"] * 5000)
    with pytest.raises(PayloadTooLarge):
        await read_body(upload.request, 1000)
    assert upload.pulled == 1001


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["ten", "-1", "1e3", "²"])
async def test_a_malformed_content_length_is_a_bad_request(value: str) -> None:
    upload = _Upload([b"{}"], {"content-length": value})
    with pytest.raises(InvalidRequest):
        await read_body(upload.request, 100)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
async def test_compressed_bodies_are_inflated(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    packed = compress(b'{"inputs": []}' * 10)
    upload = _Upload([packed[:7], packed[7:]], {"content-encoding": encoding})
    assert await read_body(upload.request, 1000) == b'{"inputs": []}' * 10


@pytest.mark.anyio
async def test_a_compression_bomb_is_refused_at_the_cap() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)  # ~50 KB that inflates to 50 MB
    upload = _Upload([bomb], {"content-encoding": "gzip"})
    with pytest.raises(PayloadTooLarge):
        await read_body(upload.request, 1_000_000)


@pytest.mark.anyio
async def test_corrupt_and_truncated_compressed_bodies_are_bad_requests() -> None:
    with pytest.raises(InvalidRequest, match="not valid gzip"):
        await read_body(_Upload([b"not gzip at all"], {"content-encoding": "gzip"}).request, 100)
    truncated = gzip.compress(b"x" * 1000)[:-6]
    with pytest.raises(InvalidRequest, match="truncated"):
        await read_body(_Upload([truncated], {"content-encoding": "gzip"}).request, 10_000)


@pytest.mark.anyio
async def test_an_unknown_encoding_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest, match="Content-Encoding"):
        await read_body(_Upload([b"x"], {"content-encoding": "br"}).request, 100)
