"""The lean benchmark client: extra request headers, the headers it watches, error bodies."""

from __future__ import annotations

import asyncio

from tenantserve.tools.bench.http import Pool, Watched, build_request


async def _serve_once(answers: list[bytes], heads: list[bytes]) -> tuple[asyncio.Server, int]:
    """A loopback server answering each request on a connection with the next of ``answers``
    and keeping each request's head."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            heads.append(head)
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _answer(status: str, headers: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_requests_carry_extra_headers_and_replies_read_the_watched_ones() -> None:
    answers = [
        _answer("200 OK", "X-Mux-Cache: hit\r\nX-Mux-Replica: r1\r\n", b'{"outputs": []}'),
        _answer("503 Service Unavailable", "Retry-After: 1\r\n", b'{"error": "busy"}'),
        _answer("200 OK", "", b"{}"),
    ]
    heads: list[bytes] = []

    async def main() -> list[tuple[int, str | None, str | None, bytes]]:
        server, port = await _serve_once(answers, heads)
        pool = Pool("127.0.0.1", port, limit=1, watched=Watched(b"x-mux-cache", b"x-mux-replica"))
        raw = build_request(
            f"127.0.0.1:{port}", "/v2/models/acme/m/infer", b"{}", "application/json",
            {"serve_multiplexed_model_id": "acme/m"},
        )  # fmt: skip
        replies = []
        for _ in answers:
            conn = await pool.acquire()
            try:
                reply = await conn.request(raw, timeout_s=10)
            finally:
                pool.release(conn)
            replies.append((reply.status, reply.cache, reply.replica, reply.error))
        pool.close()
        server.close()
        return replies

    replies = asyncio.run(main())
    assert replies == [
        (200, "hit", "r1", b""),  # a 200's body is never kept
        (503, None, None, b'{"error": "busy"}'),
        (200, None, None, b""),
    ]
    assert len(heads) == 3
    assert b"\r\nserve_multiplexed_model_id: acme/m\r\n" in heads[0]
    assert heads[0].startswith(b"POST /v2/models/acme/m/infer HTTP/1.1\r\n")


def test_the_default_watch_is_tenantserve_s_own_headers() -> None:
    answer = _answer("200 OK", "X-Tenantserve-Cache: miss\r\nX-Tenantserve-Replica: a\r\n", b"{}")
    heads: list[bytes] = []

    async def main() -> tuple[str | None, str | None]:
        server, port = await _serve_once([answer], heads)
        pool = Pool("127.0.0.1", port, limit=1)
        conn = await pool.acquire()
        reply = await conn.request(
            build_request(f"127.0.0.1:{port}", "/", b"", "application/json"), timeout_s=10
        )
        pool.release(conn)
        pool.close()
        server.close()
        return reply.cache, reply.replica

    assert asyncio.run(main()) == ("miss", "a")
    assert b"serve_multiplexed_model_id" not in heads[0]
