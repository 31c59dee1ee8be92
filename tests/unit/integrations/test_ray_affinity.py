"""The model-affinity policy: holders first, spill order by free budget, pinned-copy placement."""

from __future__ import annotations

import random

import pytest

from tenantserve.integrations.ray_affinity import (
    Placements,
    ReplicaView,
    pins_for_rank,
    rank_replicas,
    routing_stats,
    warm_ranks,
)
from tenantserve.types import ModelStatus

MB = 1_000_000


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _status(model_id: str, nbytes: int) -> ModelStatus:
    return ModelStatus(
        model_id=model_id, state="ready", nbytes=nbytes, pinned=False, in_flight=0, hits=1,
        last_used_s=0.0, load_seconds=0.1,
    )  # fmt: skip


def _view(replica_id: str, *resident: str, free: int | None = 100 * MB) -> ReplicaView:
    stats = routing_stats(
        [_status(m, 10 * MB) for m in resident], 100 * MB + 10 * MB * len(resident)
    )
    if free is None:
        return ReplicaView.from_stats(replica_id, {})
    return ReplicaView.from_stats(replica_id, {**stats, "free_bytes": free})


def _rank(
    model_id: str, *views: ReplicaView, placements: Placements | None = None
) -> list[list[str]]:
    chosen = placements if placements is not None else Placements(ttl_s=10)
    return rank_replicas(model_id, views, chosen, rng=random.Random(0))


def test_routing_stats_report_ids_and_bytes() -> None:
    stats = routing_stats([_status("b/m", 3 * MB), _status("a/m", 2 * MB)], 8 * MB)
    assert stats == {"resident": ["a/m", "b/m"], "free_bytes": 3 * MB, "model_bytes": 5 * MB}
    assert routing_stats([_status("a/m", 9 * MB)], 8 * MB)["free_bytes"] == 0


def test_view_of_a_replica_that_has_not_reported_is_empty_with_unknown_free() -> None:
    view = ReplicaView.from_stats("r1", {})
    assert view == ReplicaView("r1", frozenset(), None, 0)


def test_holders_come_first_then_one_replica_per_rank_by_free_budget() -> None:
    ranks = _rank(
        "t/hot",
        _view("small", free=5 * MB),
        _view("holder", "t/hot", free=1 * MB),
        _view("roomy", free=90 * MB),
    )
    assert ranks == [["holder"], ["roomy"], ["small"]]


def test_every_holder_shares_rank_zero_so_a_spilled_model_is_served_by_both() -> None:
    ranks = _rank("t/hot", _view("a", "t/hot"), _view("b", "t/hot"), _view("c"))
    assert [sorted(rank) for rank in ranks] == [["a", "b"], ["c"]]


def test_a_request_without_a_model_may_go_to_any_replica() -> None:
    (everyone,) = _rank("", _view("a", "x/y"), _view("b"))
    assert sorted(everyone) == ["a", "b"]
    assert _rank("t/m") == []


def test_a_new_replica_counts_as_the_emptiest() -> None:
    assert _rank("t/m", _view("old", "x/y", free=90 * MB), _view("new", free=None))[0] == ["new"]


def test_recent_placements_hold_the_model_until_they_expire() -> None:
    clock = _Clock()
    placements = Placements(ttl_s=5, clock=clock)
    placements.record("t/m", "b")
    assert _rank("t/m", _view("a"), _view("b"), placements=placements)[0] == ["b"]
    clock.now += 6
    assert not placements.holds("b", "t/m")
    assert placements.recent("b") == set()


def test_cold_models_spread_before_any_replica_reports() -> None:
    placements = Placements(ttl_s=10)
    views = (_view("a", free=None), _view("b", free=None))
    for model_id in ("t/1", "t/2", "t/3", "t/4"):
        placements.record(model_id, _rank(model_id, *views, placements=placements)[0][0])
    assert len(placements.recent("a")) == len(placements.recent("b")) == 2


def test_models_sent_but_not_yet_reported_count_against_free_budget() -> None:
    placements = Placements(ttl_s=10)
    for i in range(3):
        placements.record(f"t/pending-{i}", "a")
    # a reports 60 MB free but was just sent three ~10 MB models; b has 40 MB free.
    views = (_view("a", "x/1", free=60 * MB), _view("b", "x/2", free=40 * MB))
    assert _rank("t/new", *views, placements=placements)[0] == ["b"]


def test_forgotten_replicas_drop_their_placements() -> None:
    placements = Placements(ttl_s=10)
    placements.record("t/m", "gone")
    placements.record("t/m", "kept")
    placements.forget({"kept"})
    assert not placements.holds("gone", "t/m")
    assert placements.holds("kept", "t/m")


@pytest.mark.parametrize(("copies", "spread", "expected"), [(1, 4, 1), (2, 4, 2), (9, 3, 3)])
def test_warm_ranks_are_distinct_and_capped_by_spread(
    copies: int, spread: int, expected: int
) -> None:
    ranks = warm_ranks("acme/hot", copies, spread)
    assert len(ranks) == expected
    assert ranks <= set(range(spread))
    assert warm_ranks("acme/hot", copies, spread) == ranks  # stable across processes
    assert warm_ranks("acme/hot", 0, spread) == set()
    assert warm_ranks("acme/hot", copies, 0) == set()


def test_pinned_copies_are_placed_on_exactly_that_many_ranks() -> None:
    copies = {"acme/hot": 2, "beta/hot": 1, "gamma/hot": 3}
    per_rank = [pins_for_rank(copies, rank, 3) for rank in range(3)]
    for model_id, wanted in copies.items():
        assert sum(model_id in pins for pins in per_rank) == wanted
