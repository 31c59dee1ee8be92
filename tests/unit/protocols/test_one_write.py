"""OneWrite: a response's head waits for its body and both leave in one write."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import pytest

from tenantserve.protocols.one_write import OneWrite


@dataclass
class Recorder:
    """A transport that records each write (and whether it was closed)."""

    writes: list[bytes] = field(default_factory=list)
    closed: bool = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@dataclass
class Cycle:
    response_started: bool = False


def _one_write(recorder: Recorder, cycle: Cycle) -> OneWrite:
    transport = cast(asyncio.Transport, recorder)
    return OneWrite(transport, cycle, asyncio.get_running_loop())


@pytest.mark.anyio
async def test_head_and_body_leave_in_one_write_and_later_chunks_pass_through() -> None:
    recorder, cycle = Recorder(), Cycle()
    out = _one_write(recorder, cycle)
    cycle.response_started = True
    out.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert recorder.writes == []
    out.write(b"first")
    out.write(b"second")
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nfirst", b"second"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert len(recorder.writes) == 2


@pytest.mark.anyio
async def test_a_continue_before_the_head_is_not_held() -> None:
    recorder, cycle = Recorder(), Cycle()
    out = _one_write(recorder, cycle)
    out.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it to send its body
    assert recorder.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


@pytest.mark.anyio
async def test_a_head_whose_body_does_not_follow_leaves_on_the_next_turn() -> None:
    recorder, cycle = Recorder(), Cycle(response_started=True)
    out = _one_write(recorder, cycle)
    out.write(b"head")
    await asyncio.sleep(0)
    assert recorder.writes == [b"head"]
    out.write(b"chunk")
    assert recorder.writes == [b"head", b"chunk"]


@pytest.mark.anyio
async def test_close_sends_what_is_held_first_and_other_calls_reach_the_transport() -> None:
    recorder, cycle = Recorder(), Cycle(response_started=True)
    out = _one_write(recorder, cycle)
    out.write(b"head")
    out.close()
    assert recorder.writes == [b"head"]
    assert recorder.closed
    assert out.is_closing()
