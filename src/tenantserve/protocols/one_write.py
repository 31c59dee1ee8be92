"""OneWrite: a response's head and its body leave in one write, not two.

uvicorn writes a response's status line and headers, then its body, each with its own
``transport.write``: two send syscalls per answer on the event loop, which a profile of the
all-resident run found to be 18% of the loop's samples (this machine's syscalls are dear).
Holding the head until the body's first write joins them; a head whose body does not follow
in the same step (a stream waiting for its first chunk) leaves on the loop's next turn.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class _Cycle(Protocol):
    """What OneWrite reads of uvicorn's ``RequestResponseCycle``."""

    response_started: bool


class OneWrite:
    """The transport as one request's response cycle sees it (see the module)."""

    __slots__ = ("_cycle", "_held", "_loop", "_passing", "_transport")

    def __init__(
        self, transport: asyncio.Transport, cycle: _Cycle, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._transport = transport
        self._cycle = cycle
        self._loop = loop
        self._held: bytes | None = None
        self._passing = False  # the head has gone: every write goes straight through

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._passing = True
            self._transport.write(held + data)
        elif self._passing or not self._cycle.response_started:
            self._transport.write(data)  # a body chunk, or "100 Continue" before the head
        else:
            self._held = data  # the head: wait for the body
            self._loop.call_soon(self._flush)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._passing = True
            self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)  # is_closing, get_extra_info, ...
