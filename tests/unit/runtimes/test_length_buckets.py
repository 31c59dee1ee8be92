"""Length buckets: a batch's texts cut into runs of similar length, every row in one run."""

from __future__ import annotations

import random

from tenantserve.runtimes.length_buckets import length_buckets


def _cost(lengths: list[int], buckets: list[list[int]], run_cost: int) -> int:
    return sum(run_cost + len(b) * max(lengths[i] for i in b) for b in buckets)


def test_every_row_is_in_one_bucket_in_index_order() -> None:
    lengths = [random.Random(seed).randint(4, 80) for seed in range(40)]
    buckets = length_buckets(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(40))
    assert all(b == sorted(b) for b in buckets)


def test_alike_lengths_share_one_run_and_outliers_get_their_own() -> None:
    assert length_buckets([10] * 8) == [list(range(8))]
    assert length_buckets([10, 12, 11, 64, 9, 13], run_cost=16) == [[0, 1, 2, 4, 5], [3]]
    assert length_buckets([]) == []


def test_buckets_cost_no_more_than_one_padded_run_or_one_run_per_row() -> None:
    rng = random.Random(1)
    for _ in range(50):
        lengths = [rng.randint(4, 80) for _ in range(rng.randint(1, 32))]
        cost = _cost(lengths, length_buckets(lengths, run_cost=16), 16)
        assert cost <= 16 + len(lengths) * max(lengths)
        assert cost <= sum(16 + n for n in lengths)
