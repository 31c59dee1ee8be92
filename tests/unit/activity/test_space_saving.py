"""SpaceSaving: bounded counters that always hold the heavy hitters."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tenantserve.activity import SpaceSaving


def test_exact_while_under_capacity() -> None:
    counts: SpaceSaving[str] = SpaceSaving(4)
    for key in "aabacd":
        assert counts.add(key) is None
    assert counts.top(2) == [("a", 3), ("b", 1)]
    assert (counts.count("c"), counts.error("c"), counts.count("zzz")) == (1, 0, 0)
    assert len(counts) == 4
    assert "d" in counts


def test_a_new_key_displaces_the_smallest_and_inherits_its_count() -> None:
    counts: SpaceSaving[str] = SpaceSaving(2)
    counts.add("a", 5)
    counts.add("b", 2)
    assert counts.add("c") == "b"
    assert set(counts) == {"a", "c"}
    assert (counts.count("c"), counts.error("c")) == (3, 2)  # an over-estimate, bounded


def test_heavy_hitters_survive_a_long_tail_in_bounded_memory() -> None:
    rng = random.Random(3)
    stream = [f"hot{i}" for i in range(5) for _ in range(400)]
    stream += [f"cold{i}" for i in range(5000)]  # each seen once
    rng.shuffle(stream)
    counts: SpaceSaving[str] = SpaceSaving(32)
    for key in stream:
        counts.add(key)
    true = Counter(stream)
    assert len(counts) == 32
    top = counts.top(5)
    assert {key for key, _ in top} == {f"hot{i}" for i in range(5)}
    for key, count in top:
        assert count - counts.error(key) <= true[key] <= count


def test_halving_ages_counts_and_forgets_the_rare() -> None:
    counts: SpaceSaving[str] = SpaceSaving(8)
    counts.add("a", 9)
    counts.add("b", 1)
    counts.halve()
    assert counts.top(5) == [("a", 4)]
    assert "b" not in counts


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SpaceSaving(0)
