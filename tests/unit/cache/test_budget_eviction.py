"""MemoryBudget arithmetic and LRU order."""

from __future__ import annotations

import pytest

from tenantserve.cache import LRU, MemoryBudget


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
