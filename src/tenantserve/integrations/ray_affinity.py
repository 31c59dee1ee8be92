"""Model-affinity routing policy for Ray Serve replicas: holders first, then most free budget.

Plain data in, plain data out, so the policy is tested without a Ray cluster; the adapter in
``ray_router.py`` feeds it each replica's routing stats (what its cache holds, in bytes).
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenantserve.types import ModelStatus

RESIDENT = "resident"
"""Routing-stats key: ids of the models the replica's cache holds now."""
FREE_BYTES = "free_bytes"
"""Routing-stats key: budget bytes not held by resident models."""
MODEL_BYTES = "model_bytes"
"""Routing-stats key: bytes the resident models hold in all."""


def routing_stats(resident: Sequence[ModelStatus], budget_bytes: int) -> dict[str, Any]:
    """What a replica reports to Serve's controller, which passes it on to every router.

    Only the model ids and two byte counts travel, so the broadcast stays small and changes
    only when a model loads or leaves (the controller rebroadcasts only changed stats).
    """
    used = sum(status.nbytes for status in resident)
    return {
        RESIDENT: sorted(status.model_id for status in resident),
        FREE_BYTES: max(0, budget_bytes - used),
        MODEL_BYTES: used,
    }


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica as the router sees it: its id and its last reported cache contents."""

    replica_id: str
    resident: frozenset[str]
    free_bytes: int | None  # None: the replica has not reported yet (it is new: empty)
    model_bytes: int = 0

    @classmethod
    def from_stats(cls, replica_id: str, stats: Mapping[str, Any]) -> ReplicaView:
        free = stats.get(FREE_BYTES)
        return cls(
            replica_id=replica_id,
            resident=frozenset(stats.get(RESIDENT, ())),
            free_bytes=int(free) if free is not None else None,
            model_bytes=int(stats.get(MODEL_BYTES, 0)),
        )


class Placements:
    """Where this router sent each model lately.

    Routing stats reach the router a period or two after a load; until then, a replica that
    was just sent a model counts as holding it, so a burst of first calls lands on one
    replica instead of loading the model everywhere. Entries expire after ``ttl_s``, by
    which time the replica's own stats say whether it kept the model.
    """

    def __init__(self, *, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._by_replica: dict[str, dict[str, float]] = {}

    def record(self, model_id: str, replica_id: str) -> None:
        self._by_replica.setdefault(replica_id, {})[model_id] = self._clock() + self._ttl_s

    def holds(self, replica_id: str, model_id: str) -> bool:
        expires = self._by_replica.get(replica_id, {}).get(model_id)
        return expires is not None and expires > self._clock()

    def recent(self, replica_id: str) -> set[str]:
        """Unexpired models sent to ``replica_id``; drops the expired ones as it goes."""
        models = self._by_replica.get(replica_id)
        if not models:
            return set()
        now = self._clock()
        for model_id in [m for m, expires in models.items() if expires <= now]:
            del models[model_id]
        return set(models)

    def forget(self, keep: Collection[str]) -> None:
        """Drop replicas that are gone (dead, or scaled down)."""
        for replica_id in [r for r in self._by_replica if r not in keep]:
            del self._by_replica[replica_id]


def rank_replicas(
    model_id: str,
    replicas: Sequence[ReplicaView],
    placements: Placements,
    *,
    rng: random.Random,
) -> list[list[str]]:
    """Candidate replica ids, best rank first; Serve tries each rank until one has room.

    - No model named (health, metrics, listings): one rank of every replica, so Serve picks
      the least busy.
    - Rank 0: every replica whose cache holds the model, or that was just sent it; Serve
      picks the least busy of them. When all of them are full (``max_ongoing_requests``),
      the request spills to the next rank and the model gains a copy there. Ranks of
      several replicas are shuffled: Serve breaks ties in queue length by list order.
    - Then one replica per rank, the most free budget first: free bytes from the stats less
      an estimate for models sent but not yet reported, ties broken by fewer models, then
      at random so cold models spread.
    """
    if not replicas:
        return []
    if not model_id:
        return [_shuffled([view.replica_id for view in replicas], rng)]
    holders = [
        view.replica_id
        for view in replicas
        if model_id in view.resident or placements.holds(view.replica_id, model_id)
    ]
    mean_model_bytes = _mean_model_bytes(replicas)
    keyed: list[tuple[float, int, float, str]] = []
    for view in replicas:
        if view.replica_id in holders:
            continue
        pending = placements.recent(view.replica_id) - view.resident
        free = float("inf") if view.free_bytes is None else float(view.free_bytes)
        free -= len(pending) * mean_model_bytes
        models = len(view.resident) + len(pending)
        keyed.append((-free, models, rng.random(), view.replica_id))
    keyed.sort()
    ranks = [[replica_id] for *_, replica_id in keyed]
    return [_shuffled(holders, rng), *ranks] if holders else ranks


def _shuffled(replica_ids: list[str], rng: random.Random) -> list[str]:
    rng.shuffle(replica_ids)
    return replica_ids


def _mean_model_bytes(replicas: Sequence[ReplicaView]) -> float:
    models = sum(len(view.resident) for view in replicas)
    if models == 0:
        return 0.0
    return sum(view.model_bytes for view in replicas) / models


def warm_ranks(model_id: str, copies: int, spread: int) -> set[int]:
    """Replica ranks that keep a pinned copy of ``model_id``: ``copies`` of the first ``spread``.

    The start rank comes from a stable hash of the id (crc32, not ``hash()``, which differs
    between processes), so the pinned copies of many models spread over the replicas.
    """
    if spread <= 0 or copies <= 0:
        return set()
    start = zlib.crc32(model_id.encode()) % spread
    return {(start + i) % spread for i in range(min(copies, spread))}


def pins_for_rank(min_copies: Mapping[str, int], rank: int, spread: int) -> list[str]:
    """The models the replica of ``rank`` loads and pins at start-up."""
    return sorted(m for m, copies in min_copies.items() if rank in warm_ranks(m, copies, spread))
