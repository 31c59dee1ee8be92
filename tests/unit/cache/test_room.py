"""Room: whom a load evicts."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from tenantserve.cache.budget import MemoryBudget
from tenantserve.cache.policies import S3FIFO
from tenantserve.cache.resident import FRESH_S, Resident
from tenantserve.cache.room import Room
from tenantserve.metrics import Metrics
from tenantserve.types import ModelId


class _Model:
    def close(self) -> None:
        return None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _resident(name: str, nbytes: int) -> Resident:
    return Resident(ModelId.parse(name), _Model(), nbytes, None, 0.01)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_model_loaded_for_waiting_requests_is_evicted_last() -> None:
    """S3-FIFO ranks a model seen once first; one just loaded for requests that have not yet
    resumed to take it must not be the victim while an older idle model can go."""
    budget, policy = MemoryBudget(300), S3FIFO[ModelId]()
    entries: dict[ModelId, Resident] = {}
    detached: list[str] = []

    def detach(entry: Resident, _why: str) -> None:
        budget.release(entry.nbytes, "acme")  # as the cache does
        detached.append(entry.model_id.value)

    room = Room(
        budget=budget, policy=policy, metrics=Metrics(CollectorRegistry()), entries=entries,
        overhead=lambda: 0, detach=detach,
        close=_close, wait_s=1.0,
    )  # fmt: skip
    old, new = _resident("acme/old", 100), _resident("acme/new", 100)
    for entry in (old, new):
        entries[entry.model_id] = entry
        policy.add(entry.model_id, nbytes=entry.nbytes, load_seconds=0.01)
        budget.reserve(entry.nbytes, "acme")
    for _ in range(3):
        policy.touch(old.model_id)  # used often: S3-FIFO keeps it over the one seen once
    old.hits, old.loaded_at = 3, old.loaded_at - 10
    assert next(iter(policy.candidates())) == new.model_id
    await room.make(ModelId.parse("acme/next"), 150, why="loading acme/next")
    assert detached == ["acme/old"]
    # Past the fresh window, or once used, it is an ordinary candidate again.
    new.loaded_at -= FRESH_S
    assert not new.fresh(new.loaded_at + FRESH_S + 0.1)


async def _close(entry: Resident) -> None:
    return None
