"""EventLog: the latest loads, evictions, unloads, failed loads and rejections, in a ring."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from itertools import islice
from typing import Literal

EventKind = Literal["load", "evict", "unload", "load_failed", "rejected"]

# Rejections come in floods; one line per model and reason per few seconds says the same.
_COALESCE_S = 5.0
_COALESCE_LOOKBACK = 16


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """What the model cache reports through its optional event sink.

    Attributes:
        kind: ``load``, ``evict`` (made room), ``unload`` (asked for) or ``load_failed``.
        nbytes: the model's measured size (loads, evictions, unloads).
        seconds: how long the load took.
        detail: why a load failed; for a load, how the model loaded when not the fast way.
    """

    kind: Literal["load", "evict", "unload", "load_failed"]
    model_id: str
    nbytes: int = 0
    seconds: float = 0.0
    detail: str = ""


@dataclass(slots=True)
class Event:
    """One entry of the log; ``count`` > 1 when repeats within a few seconds were folded in."""

    seq: int
    time_s: float
    kind: EventKind
    model_id: str
    nbytes: int = 0
    seconds: float = 0.0
    detail: str = ""
    count: int = 1
    last_s: float = 0.0


class EventLog:
    """The newest ``capacity`` events; each gets a sequence number, so readers can tell new ones."""

    def __init__(self, capacity: int = 200) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0

    def add(
        self,
        time_s: float,
        kind: EventKind,
        model_id: str,
        *,
        nbytes: int = 0,
        seconds: float = 0.0,
        detail: str = "",
    ) -> None:
        if kind == "rejected":
            for event in islice(reversed(self._events), _COALESCE_LOOKBACK):
                if time_s - event.time_s > _COALESCE_S:
                    break
                if (event.kind, event.model_id, event.detail) == (kind, model_id, detail):
                    event.count += 1
                    event.last_s = time_s
                    return
        self._seq += 1
        self._events.append(
            Event(self._seq, time_s, kind, model_id, nbytes, seconds, detail, last_s=time_s)
        )

    def newest(self, limit: int) -> list[Event]:
        """Up to ``limit`` events, newest first (copies: the log keeps changing)."""
        return [replace(event) for event in islice(reversed(self._events), limit)]
