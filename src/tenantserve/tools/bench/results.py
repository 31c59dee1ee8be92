"""The raw record of a replay: one outcome per request, the server samples, and how to join runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tenantserve.tools.bench.sampler import Sample

STATUS_CONNECTION_ERROR = 0
"""Outcome status of a request whose connection failed."""
STATUS_TIMEOUT = -1
"""Outcome status of a request unanswered within its timeout (or when the run ended)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was due, how long until its answer, and whether it was cold.

    ``latency_s`` runs from when the client took the request up (waits for a free connection
    included); ``lag_s`` is how late that was after its trace time (open loop; 0 when closed),
    which shows whether the client kept up: it stays within the timer's millisecond unless the
    client itself is short of CPU.
    """

    t_s: float
    model_id: str
    latency_s: float
    status: int
    cold: bool
    cache: str | None
    lag_s: float = 0.0


@dataclass
class RunResult:
    """Everything one replay measured, raw."""

    label: str
    url: str
    mode: str
    concurrency: int | None
    trace: str
    wall_s: float
    outcomes: list[Outcome]
    samples: list[Sample]
    classification: str
    client_cpu_s: float
    next_request: int = 0
    """Closed loop: the trace index a following slice of the same run starts at."""
    meta: dict[str, Any] = field(default_factory=dict)


def join_runs(parts: Sequence[RunResult]) -> RunResult:
    """One run from slices of the same label taken in turn (interleaved with other servers).

    Each slice's times are shifted by the length of the slices before it, so the timelines join
    end to end; walls and client CPU add up. Server counters are cumulative, so first-to-last
    sample deltas still cover exactly the requests of the slices.
    """
    if not parts:
        raise ValueError("no runs to join")
    outcomes: list[Outcome] = []
    samples: list[Sample] = []
    offset = 0.0
    for part in parts:
        outcomes += [dataclasses.replace(o, t_s=o.t_s + offset) for o in part.outcomes]
        samples += [dataclasses.replace(s, t_s=s.t_s + offset) for s in part.samples]
        offset += part.wall_s
    first = parts[0]
    classification = "header" if all(p.classification == "header" for p in parts) else "first-seen"
    return dataclasses.replace(
        first,
        wall_s=offset,
        outcomes=outcomes,
        samples=samples,
        classification=classification,
        client_cpu_s=sum(p.client_cpu_s for p in parts),
        next_request=parts[-1].next_request,
        meta=first.meta | {"slices": len(parts)},
    )
