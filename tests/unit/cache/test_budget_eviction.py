"""MemoryBudget arithmetic and LRU order."""

from __future__ import annotations

import pytest

from tenantserve.cache import LRU, CostAware, MemoryBudget


def test_budget_reserve_release() -> None:
    budget = MemoryBudget(100)
    assert budget.fits(100)
    budget.reserve(60)
    assert budget.free_bytes == 40
    assert not budget.fits(41)
    assert budget.can_ever_fit(100)
    assert not budget.can_ever_fit(101)
    budget.release(60)
    assert budget.used_bytes == 0
    with pytest.raises(AssertionError):
        budget.release(1)


def test_lru_orders_least_recent_first() -> None:
    lru: LRU[str] = LRU()
    for key in "abc":
        lru.add(key)
    lru.touch("a")
    assert list(lru.candidates()) == ["b", "c", "a"]
    lru.remove("c")
    lru.touch("missing")
    assert list(lru.candidates()) == ["b", "a"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cost_aware_prefers_evicting_cheap_large_and_rare() -> None:
    clock = FakeClock()
    policy: CostAware[str] = CostAware(clock=clock)
    policy.add("big-cheap", nbytes=100, load_seconds=0.01)
    policy.add("small-dear", nbytes=10, load_seconds=0.5)
    policy.add("popular", nbytes=100, load_seconds=0.01)
    for _ in range(50):
        policy.touch("popular")
    assert next(policy.candidates()) == "big-cheap"
    assert list(policy.candidates())[-1] == "small-dear"


def test_cost_aware_ages_out_models_no_longer_used() -> None:
    policy: CostAware[str] = CostAware(aging=1.0, clock=FakeClock())
    policy.add("was-hot", nbytes=10, load_seconds=0.1)
    for _ in range(5):
        policy.touch("was-hot")
    # Newcomers are loaded and evicted one after another: each eviction raises the inflation,
    # until a fresh model outranks the old hot one that nobody touches any more.
    for i in range(200):
        policy.add(f"new{i}", nbytes=10, load_seconds=0.1)
        policy.touch(f"new{i}")
        victim = next(policy.candidates())
        policy.remove(victim, evicted=True)
        if victim == "was-hot":
            break
    else:
        raise AssertionError("a model that is never used again must eventually be evicted")


def test_cost_aware_offers_young_models_last() -> None:
    clock = FakeClock()
    policy: CostAware[str] = CostAware(min_residency_s=10, clock=clock)
    policy.add("old", nbytes=10, load_seconds=1.0)
    for _ in range(10):
        policy.touch("old")
    clock.now = 20
    policy.add("young", nbytes=1000, load_seconds=0.001)  # the cheapest victim, but too new
    assert list(policy.candidates()) == ["old", "young"]
    clock.now = 31
    assert list(policy.candidates()) == ["young", "old"]
    policy.remove("young")
    policy.remove("missing")
    assert list(policy.candidates()) == ["old"]
