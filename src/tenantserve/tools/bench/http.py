"""A minimal HTTP/1.1 keep-alive client over asyncio protocols, lean enough to not be the limit.

aiohttp spent about 145 µs of client CPU per request here, enough to take a quarter of a core
from the server on a 2-core box; this client sends pre-built request bytes in one write and
reads only the status line and the four headers it needs, like wrk. It speaks just enough
HTTP for a benchmark: ``Content-Length`` framing (what uvicorn sends), no redirects, no TLS.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """A response's status code, its cache header (``hit``/``miss``) and the replica that
    answered (each ``None`` if absent)."""

    status: int
    cache: str | None
    replica: str | None = None
    error: bytes = b""
    """The body of an answer other than 200 (the only bodies kept: they say why)."""


@dataclass(frozen=True, slots=True)
class Watched:
    """Which response headers say the cache outcome and the replica (lowercase)."""

    cache: bytes = b"x-tenantserve-cache"
    replica: bytes = b"x-tenantserve-replica"


class ProtocolError(Exception):
    """The server answered with something this client does not parse (or closed early)."""


def build_request(
    host: str, path: str, body: bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> bytes:
    """The whole request, encoded once, sent as is for every call to the same model."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, watched: Watched = Watched()) -> None:
        self._watched = watched
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Reply] | None = None
        self._need = -1
        self._body_start = 0
        self._reply: Reply | None = None
        self._keep_alive = True
        self.closed = False
        self.idle_since = 0.0  # when the pool last parked it (monotonic seconds)

    @classmethod
    async def open(cls, host: str, port: int, watched: Watched = Watched()) -> Connection:
        """Connect to ``host:port``."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(functools.partial(cls, watched), host, port)
        return protocol

    @property
    def reusable(self) -> bool:
        """Whether another request may go on this connection."""
        return not self.closed and self._keep_alive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ProtocolError("connection closed before the response was complete"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._need < 0:
            end = self._buffer.find(_HEAD_END)
            if end < 0:
                return
            try:
                self._parse_head(bytes(self._buffer[:end]), end + len(_HEAD_END))
            except (ValueError, IndexError) as exc:
                self.abort()
                self._fail(ProtocolError(f"unparsable response head: {exc}"))
                return
        if len(self._buffer) >= self._need:
            if self._reply is not None and self._reply.status != 200:
                error = bytes(self._buffer[self._body_start : self._need])
                self._reply = dataclasses.replace(self._reply, error=error)
            del self._buffer[: self._need]
            self._need = -1
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done() and self._reply is not None:
                waiter.set_result(self._reply)

    async def request(self, raw: bytes, *, timeout_s: float) -> Reply:
        """Send ``raw`` (from :func:`build_request`) and wait for the whole response.

        Raises :class:`TimeoutError` after ``timeout_s`` (the connection is then dropped) and
        :class:`ProtocolError` if the connection fails.
        """
        if self._transport is None or self.closed:
            raise ProtocolError("connection is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Reply] = loop.create_future()
        self._waiter = waiter
        # A timer handle per request is far cheaper than asyncio.wait_for's task per request.
        timer = loop.call_later(timeout_s, self._time_out)
        self._transport.write(raw)
        try:
            return await waiter
        except asyncio.CancelledError:
            self.abort()  # the response may still arrive; this connection cannot be reused
            raise
        finally:
            timer.cancel()

    def abort(self) -> None:
        """Drop the connection now (a timed-out request leaves it in an unknown state)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    def _parse_head(self, head: bytes, body_start: int) -> None:
        status = int(head[9:12])
        lower = head.lower()
        length = _header(lower, b"content-length")
        if length is None:
            raise ValueError("no Content-Length")
        self._keep_alive = _header(lower, b"connection") != b"close"
        cache = _header(head, self._watched.cache, lower)
        replica = _header(head, self._watched.replica, lower)
        self._reply = Reply(
            status,
            cache.decode("latin-1") if cache is not None else None,
            replica.decode("latin-1") if replica is not None else None,
        )
        self._need = body_start + int(length)
        self._body_start = body_start

    def _time_out(self) -> None:
        self._fail(TimeoutError("no complete response in time"))
        self.abort()

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


def _header(head: bytes, name: bytes, lower: bytes | None = None) -> bytes | None:
    """The stripped value of header ``name`` (lowercase) in a response head, or None."""
    search = lower if lower is not None else head
    start = search.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    end = search.find(b"\r\n", start)
    return head[start : end if end >= 0 else len(head)].strip()


# uvicorn closes a keep-alive connection idle for 5 s; reusing one at that moment fails for no
# fault of the server (a soak at 2x capacity lost 26 requests so), so idle ones retire sooner.
_MAX_IDLE_S = 3.0


class Pool:
    """Up to ``limit`` connections to one server; callers queue (FIFO) when all are busy."""

    def __init__(self, host: str, port: int, *, limit: int, watched: Watched = Watched()) -> None:
        self._host = host
        self._port = port
        self._limit = limit
        self._watched = watched
        self._idle: collections.deque[Connection] = collections.deque()
        self._open = 0
        self._queue: collections.deque[asyncio.Future[Connection | None]] = collections.deque()

    async def acquire(self) -> Connection:
        """An idle connection, a new one, or the next one released."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and time.monotonic() - conn.idle_since < _MAX_IDLE_S:
                return conn
            conn.abort()
            self._open -= 1
        if self._open >= self._limit:
            waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over as we were cancelled
                    handed = waiter.result()
                    if handed is not None:
                        self.release(handed)
                    else:
                        self._hand_on(None)
                raise
            if handed is not None:
                return handed
        self._open += 1
        try:
            return await Connection.open(self._host, self._port, self._watched)
        except BaseException:
            self._open -= 1
            self._hand_on(None)
            raise

    def release(self, conn: Connection) -> None:
        """Give ``conn`` back: to the next waiter, to the idle set, or closed for good."""
        if not conn.reusable:
            conn.abort()
            self._open -= 1
            self._hand_on(None)  # a waiter may open a fresh connection in its place
            return
        if not self._hand_on(conn):
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

    def close(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._idle.pop().abort()
            self._open -= 1

    def _hand_on(self, conn: Connection | None) -> bool:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False
