"""Ray Serve request router that sends each request to a replica whose cache holds its model.

Serve builds one instance in every process that holds a handle to the deployment (each HTTP
proxy), calls :meth:`choose_replicas` for each request, and probes the ranked candidates'
queue lengths itself: the least busy replica of the first rank with room gets the request.
The policy lives in ``ray_affinity.py``; this adapter only converts Serve's objects.
"""

from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    ReplicaResult,
    RequestRouter,
    RunningReplica,
)

from tenantserve.integrations.ray_affinity import Placements, ReplicaView, rank_replicas

DEFAULT_PLACEMENT_TTL_S = 10.0


class ModelAffinityRouter(RequestRouter):  # type: ignore[misc]  # Ray ships no type stubs
    """Holders of the model first, then the replica with the most free budget (see module)."""

    def initialize_state(self, placement_ttl_s: float = DEFAULT_PLACEMENT_TTL_S, **_: Any) -> None:
        # Serve calls this right after construction, with RequestRouterConfig's kwargs.
        self._placements = Placements(ttl_s=placement_ttl_s)
        self._rng = random.Random()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        model_id = _model_of(pending_request)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        views = [ReplicaView.from_stats(rid, r.routing_stats or {}) for rid, r in by_id.items()]
        ranks = rank_replicas(model_id, views, self._placements, rng=self._rng)
        if model_id and ranks and len(ranks[0]) == 1:
            # Claim the pick now, before Serve's queue probe returns: concurrent first calls
            # of one model then agree on one replica instead of each loading it elsewhere.
            self._placements.record(model_id, ranks[0][0])
        return [[by_id[replica_id] for replica_id in rank] for rank in ranks]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult
    ) -> None:
        model_id = _model_of(pending_request)
        if model_id:
            self._placements.record(model_id, replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._placements.forget({r.replica_id.unique_id for r in replicas})


def _model_of(pending_request: PendingRequest | None) -> str:
    if pending_request is None:
        return ""
    return str(pending_request.metadata.multiplexed_model_id or "")
