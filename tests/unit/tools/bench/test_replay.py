"""Offline replay through the real cache: policies differ as they should, Belady bounds them."""

from __future__ import annotations

import random

import pytest

from tenantserve.tools.bench.replay import POLICIES, replay

MB = 1_000_000


def zipf_trace(n_models: int, requests: int, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    ids = [f"t{i:03d}/m" for i in range(n_models)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(n_models)]
    return [(i * 0.01, m) for i, m in enumerate(rng.choices(ids, weights=weights, k=requests))]


def test_replay_counts_are_consistent_and_belady_is_best() -> None:
    trace = zipf_trace(60, 4000, seed=3)
    rng = random.Random(3)
    sizes = {m: rng.randrange(5 * MB, 15 * MB) for _, m in trace}
    budget = sum(sizes.values()) // 4
    results = {
        policy: replay(trace, sizes=sizes, budget_bytes=budget, policy=policy)
        for policy in POLICIES
    }
    for result in results.values():
        assert result.requests == len(trace)
        assert result.hits + result.loads == len(trace)
        assert result.loads >= len(sizes)  # every model is loaded at least once
        assert result.refused == 0
        assert 0 < result.evictions < result.loads
    assert all(results["belady"].hit_ratio >= r.hit_ratio for r in results.values())
    assert results["cost"].hit_ratio > results["lru"].hit_ratio


def test_replay_with_room_for_everything_only_misses_once_per_model() -> None:
    trace = zipf_trace(20, 500, seed=1)
    sizes = {m: 10 * MB for _, m in trace}
    result = replay(trace, sizes=sizes, budget_bytes=10**12, policy="lru")
    assert result.loads == len(sizes)
    assert result.evictions == 0


def test_models_larger_than_the_budget_are_refused_not_crashed() -> None:
    trace = [(0.0, "a/big"), (1.0, "a/small"), (2.0, "a/big")]
    result = replay(
        trace, sizes={"a/big": 50 * MB, "a/small": MB}, budget_bytes=10 * MB, policy="cost"
    )
    assert result.refused == 2
    assert result.hits == 0


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        replay([], sizes={}, budget_bytes=1, policy="random")
