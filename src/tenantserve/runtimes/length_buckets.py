"""Length buckets: texts of one batch split into runs of similar token counts.

A batch of texts is padded to its longest; on a CPU an encoder's cost grows with the padded
tokens, so one long ticket among short ones can cost the batch more than batching saves (all-
MiniLM int8, one thread: a run costs about as much as 16 padded tokens of one row, each row
then ~0.4 ms per 16 tokens). Rows sorted by length are cut where that cost model says fewer
runs over less padding is cheapest (dynamic programming over the sorted lengths).
"""

from __future__ import annotations

from collections.abc import Sequence

RUN_COST_TOKENS = 16
"""A run's fixed cost, in padded tokens of one row (measured on the MiniLM encoder)."""


def length_buckets(lengths: Sequence[int], run_cost: int = RUN_COST_TOKENS) -> list[list[int]]:
    """Row indexes in buckets, each of rows of similar length, minimising the sum over buckets
    of ``run_cost + rows x longest``; rows in a bucket are in index order."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    best = [0.0] + [float("inf")] * n  # best[j]: cheapest cover of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows i..j-1 in one bucket, padded to sizes[j - 1]
            cost = best[i] + run_cost + (j - i) * sizes[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets: list[list[int]] = []
    j = n
    while j > 0:
        buckets.append(sorted(order[cut[j] : j]))
        j = cut[j]
    return buckets[::-1]
