"""uvicorn's httptools protocol with the request head bounded in bytes and in time, the body in
time, and the connections in number.

uvicorn bounds none of these when it parses with httptools: a client that sends a 100 MB
header grows the process by more than that, one that dribbles a header or a body a byte at a
time, or connects and sends nothing, holds its connection forever (slow-loris), and every
connection costs a protocol, buffers and a file descriptor. The body's size is bounded by the
handlers (``body.read_body``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tenantserve.protocols.one_write import OneWrite

MAX_HEAD_BYTES = 64 * 1024
"""The largest request line plus headers accepted (nginx allows 32 KiB, Node 16 KiB)."""

HEAD_TIMEOUT_S = 30.0
"""How long a connection may take to send a whole request head, counted from when the
connection opens or the request's first byte arrives (Apache's ``RequestReadTimeout``)."""

BODY_TIMEOUT_S = 30.0
"""How long a request's body may take to arrive, counted from the end of its head."""

MAX_CONNECTIONS = 2048
Shed = Callable[[bytes, bytes, Sequence[tuple[bytes, bytes]]], bytes | None]
"""Open connections at most; one past it is answered 503 at once and closed."""

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_BUSY_BODY = orjson.dumps({"error": "the server has as many connections open as it takes; retry"})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Refuses a request head over :attr:`max_head_bytes` with 431, closes a connection whose
    head has not arrived within :attr:`head_timeout_s` (408 if it began), answers 408 to a body
    that has not arrived within :attr:`body_timeout_s`, and 503 to a connection past
    :attr:`max_connections` before reading a byte of it."""

    max_head_bytes: int = MAX_HEAD_BYTES
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    shed: ClassVar[Shed | None] = None
    """Asked once a request's head is in: canned bytes to answer it with at once (the
    server would refuse it anyway; protocols/shedding.py), or ``None`` to serve it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # From a request's first byte (or the connection's start) to the end of its head.
        self._in_head = True
        self._head_begun = False  # a byte of the current head has arrived
        self._head_bytes = 0
        self._header_bytes = 0
        self._began_in_chunk = False
        self._refused = False
        self._shedding = False  # this request was answered from its head: skip its body
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Cheapest answer there is: no parsing, no app, no timer; the client retries.
            self._refused = True
            transport.write(_BUSY % (len(_BUSY_BODY), _BUSY_BODY))
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._began_in_chunk = False
        super().data_received(data)
        if self.transport.is_closing() or not self._in_head:
            return
        # An unfinished head sits in httptools' own buffers, out of sight: count the bytes
        # that arrive while it is unfinished. A read in which the request began may also
        # hold the previous request's body, so it is not counted (a head is never
        # over-counted; a finished head is measured exactly in on_headers_complete).
        if not self._began_in_chunk:
            self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(431, self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_begun = True
        self._head_bytes = 0
        self._header_bytes = 0
        self._began_in_chunk = True
        if not self._refused:
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_begun = False
        self._cancel_head_timer()
        if self._refused:
            return
        if len(self.url) + self._header_bytes > self.max_head_bytes:
            self._refuse(431, self._too_large())
            return
        shed = type(self).shed  # read from the class: a function stored there is not bound
        if shed is not None and (self.cycle is None or self.cycle.response_complete):
            answer = shed(self.parser.get_method(), self.url, self.headers)
            if answer is not None:
                self._shedding = True
                self.transport.write(answer)
                self._body_timer = self.loop.call_later(self.body_timeout_s, self.transport.close)
                return
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:
            cycle.transport = OneWrite(self.transport, cycle, self.loop)  # type: ignore[assignment]
        # Until the message completes (at once for a request without a body).
        self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        # The rest of a refused or already answered request, still in the parser's hands.
        if not self._refused and not self._shedding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        if self._shedding:
            # Answered already; the connection stays for the next request, timed as idle.
            self._shedding = False
            self._in_head = True
            self._arm_head_timer()
            return
        if not self._refused:
            super().on_message_complete()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier (pipelined) request is still being answered: wait another period.
            self._arm_head_timer()
            return
        if self._head_begun:
            self._refuse(408, f"the request head did not arrive within {self.head_timeout_s:g} s")
        else:
            self.transport.close()  # an idle connection that never sent a byte

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or cycle.response_complete:
            return
        self._refused = True
        if cycle.response_started:  # answered early (a refusal): only the body is late
            self.transport.close()
            return
        # The app waits for the body: answer for it, and tell it the client is gone, so a
        # response it still makes is dropped rather than written after this one.
        cycle.disconnected = True
        cycle.message_event.set()
        self._write_refusal(
            408, f"the request body did not arrive within {self.body_timeout_s:g} s"
        )

    def _too_large(self) -> str:
        return f"the request line and headers are larger than {self.max_head_bytes} bytes"

    def _refuse(self, status: int, message: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is still being answered; an answer now would land inside
            # its response. The connection is dropped instead.
            self.transport.close()
            return
        self._write_refusal(status, message)

    def _write_refusal(self, status: int, message: str) -> None:
        body = orjson.dumps({"error": message})
        reason = b"Request Header Fields Too Large" if status == 431 else b"Request Timeout"
        head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        for name, value in self.server_state.default_headers:
            head += name + b": " + value + b"\r\n"
        head += (
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(head + body)
        self.transport.close()


def bounded_httptools(
    *,
    max_head_bytes: int = MAX_HEAD_BYTES,
    head_timeout_s: float = HEAD_TIMEOUT_S,
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    shed: Shed | None = None,
) -> type[BoundedHttpToolsProtocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, with these bounds."""

    class Configured(BoundedHttpToolsProtocol):
        pass

    Configured.max_head_bytes = max_head_bytes
    Configured.head_timeout_s = head_timeout_s
    Configured.body_timeout_s = body_timeout_s
    Configured.max_connections = max_connections
    Configured.shed = shed
    return Configured
