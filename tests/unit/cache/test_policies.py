"""Each eviction policy's defining behaviour, driven as the cache drives it.

The cache makes room before it adds a newcomer, and the request that loaded a model touches
it right after: ``load`` below does both. ``evict`` takes victims in the policy's order as the
cache does, removing each before asking for the next.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import TypeVar

import pytest

from tenantserve.cache.eviction import LOAD_OVERHEAD_S, EvictionPolicy
from tenantserve.cache.policies import (
    S3FIFO,
    AdaptiveCost,
    DecayedCost,
    FrequencySketch,
    Sieve,
    WTinyLFU,
)

K = TypeVar("K", bound=Hashable)


def load(policy: EvictionPolicy[K], key: K, nbytes: int = 10) -> None:
    policy.add(key, nbytes=nbytes, load_seconds=0.0)
    policy.touch(key)


def evict(policy: EvictionPolicy[K], count: int = 1) -> list[K]:
    victims: list[K] = []
    for victim in policy.candidates():
        if len(victims) == count:
            break
        policy.remove(victim, evicted=True)
        victims.append(victim)
    return victims


def test_sieve_keeps_visited_models_and_its_hand_moves_on() -> None:
    sieve: Sieve[str] = Sieve()
    for key in "abcd":
        load(sieve, key)  # the loading request is not a second use: none is visited
    sieve.touch("a")
    sieve.touch("c")
    assert evict(sieve) == ["b"]  # the hand passes a (clearing it) and stops at b
    assert evict(sieve) == ["d"]  # from where it stopped: c is visited, d is not
    load(sieve, "e")
    # The hand wraps to the oldest: a and c were cleared on the way, so they go before e.
    assert list(sieve.candidates()) == ["a", "c", "e"]


def test_sieve_passes_over_a_victim_the_cache_skips() -> None:
    sieve: Sieve[str] = Sieve()
    for key in "abc":
        load(sieve, key)
    sieve.touch("b")
    order = list(sieve.candidates())  # nothing removed: each offered once, visited ones last
    assert order == ["a", "c", "b"]


def test_s3fifo_gives_a_one_hit_wonder_no_place_in_main() -> None:
    s3: S3FIFO[str] = S3FIFO()
    for key in "abcdefghij":  # ten of 10 bytes: a fills the small tenth, the rest go to main
        load(s3, key)
    assert evict(s3) == ["a"]  # small first, though no model in main was used again either
    load(s3, "wonder")
    assert evict(s3) == ["wonder"]
    load(s3, "regular")
    s3.touch("regular")
    s3.touch("regular")  # used twice more while in small: it moves to main instead
    assert evict(s3) == ["b"]
    assert "regular" in list(s3.candidates())
    # A model evicted from small is remembered: back soon, it goes straight to main. Main is
    # then over its nine tenths and gives up its oldest, c; then small gives up newcomer.
    load(s3, "wonder")
    load(s3, "newcomer")
    assert evict(s3, 2) == ["c", "newcomer"]


def test_s3fifo_main_reinserts_a_used_model_once_per_use() -> None:
    s3: S3FIFO[str] = S3FIFO()
    for key in "abcdefghij":
        load(s3, key)
    evict(s3)  # a leaves small; main is the rest, b oldest
    s3.touch("b")
    load(s3, "k", nbytes=30)  # small overflows: k goes first, then main must give up room
    assert evict(s3, 3) == ["k", "c", "d"]  # b was used: reinserted, passed over once


def test_wtinylfu_refuses_a_cold_newcomer_against_a_hot_victim() -> None:
    policy: WTinyLFU[str] = WTinyLFU()
    load(policy, "hot")
    for _ in range(5):
        policy.touch("hot")  # used again: protected
    # Each newcomer overflows the 1% window at once: a candidate for main. When room is
    # needed, it duels the victim, here hot (protected: probation holds only candidates).
    load(policy, "other")
    assert evict(policy) == ["other"]
    load(policy, "cold")
    assert evict(policy) == ["cold"]


def test_wtinylfu_admits_a_newcomer_used_more_than_the_victim() -> None:
    policy: WTinyLFU[str] = WTinyLFU()
    for _ in range(4):
        policy.sketch.record("popular")  # requested before, when it was not resident
    load(policy, "a")
    load(policy, "b")
    assert evict(policy) == ["a"]  # only candidates: the least used (a tie: the oldest)
    load(policy, "popular")
    assert evict(policy) == ["b"]  # the least used candidate: b (1 request), not popular (5)
    load(policy, "next")
    assert evict(policy) == ["next"]
    policy.touch("popular")  # used again: protected, admitted for good
    load(policy, "last")
    assert evict(policy) == ["last"]  # last duels popular, now the victim, and loses


def test_frequency_sketch_counts_ages_and_stops_at_its_ceiling() -> None:
    sketch = FrequencySketch(sample=40, most=15)
    for _ in range(20):
        sketch.record("a")
    assert sketch.estimate("a") == 16  # 15 counted past the doorkeeper, plus its one
    assert sketch.estimate("never") == 0
    for _ in range(20):
        sketch.record("b")  # the 40th request halves every count and empties the doorkeeper
    assert sketch.estimate("a") == 7
    assert sketch.estimate("b") == 7  # 19 counted, stopped at 15, halved


def test_decayed_cost_prefers_to_keep_recent_cheap_small_and_forgets_old_hits() -> None:
    policy: DecayedCost[str] = DecayedCost(per_model=25.0)  # tau: 100 requests, 4 models
    policy.add("big", nbytes=100, load_seconds=0.0)
    policy.add("small", nbytes=10, load_seconds=0.0)
    policy.add("dear", nbytes=100, load_seconds=1.0)
    for key in ("big", "small", "dear"):
        policy.touch(key)
    assert list(policy.candidates()) == ["big", "small", "dear"]
    for _ in range(50):
        policy.touch("big")
    assert policy.uses("big") == 8.0  # stops at the ceiling
    assert next(policy.candidates()) == "small"
    load(policy, "new")
    for _ in range(300):  # a few tau of requests for new alone: big's uses fade below one
        policy.touch("new")
    assert policy.uses("big") < 0.5
    assert list(policy.candidates())[-1] == "new"


def test_adaptive_cost_follows_the_memory_whose_shadow_hits_most() -> None:
    policy: AdaptiveCost[str] = AdaptiveCost(per_model=(2.0, 8.0, 32.0), horizon=50)
    assert policy.chosen_per_model == 8.0  # the middle until a shadow does better
    load(policy, "m0")
    load(policy, "m1")  # room for two: the shadows get the same
    # Popularity moves to a new pair every 40 requests: the short memory keeps up.
    for start in range(0, 16, 2):
        for _ in range(20):
            for key in (f"m{start}", f"m{start + 1}"):
                if key in set(policy.candidates()):
                    policy.touch(key)
                else:
                    assert evict(policy) != [key]
                    load(policy, key)
    assert policy.chosen_per_model == 2.0


@pytest.mark.parametrize("sizes", [(10, 10, 10), (5, 20, 10)])
def test_policies_offer_every_resident_model_once(sizes: tuple[int, ...]) -> None:
    policies = (
        Sieve[str](),
        S3FIFO[str](),
        WTinyLFU[str](),
        DecayedCost[str](),
        AdaptiveCost[str](),
    )
    for policy in policies:
        for key, nbytes in zip("abc", sizes, strict=True):
            load(policy, key, nbytes)
        policy.touch("b")
        assert sorted(policy.candidates()) == ["a", "b", "c"], type(policy).__name__
        policy.remove("b")  # an unload, not an eviction
        assert sorted(policy.candidates()) == ["a", "c"], type(policy).__name__


def _stream(seed: int, models: int = 12, requests: int = 3000) -> list[tuple[str, int, float]]:
    """Requests whose popular models change every 500: (model, bytes, load seconds)."""
    rng = random.Random(seed)
    sizes = {f"m{i}": rng.randint(5, 50) for i in range(models)}
    order = list(sizes)
    stream = []
    for i in range(requests):
        if i % 500 == 0:
            rng.shuffle(order)
        key = order[min(int(rng.expovariate(0.4)), models - 1)]
        stream.append((key, sizes[key], sizes[key] / 1000))
    return stream


def _replay_checking_order(
    policy: EvictionPolicy[str], seed: int, order_now: Callable[[dict[str, float]], list[str]]
) -> int:
    """Drive ``policy`` as the cache does with room for 4 models; before each eviction, its
    candidates must come in ``order_now(cost per byte of each resident model)``."""
    resident: dict[str, float] = {}
    checked = 0
    for key, nbytes, load_s in _stream(seed):
        if key not in resident:
            if len(resident) == 4:
                assert list(policy.candidates()) == order_now(resident)
                checked += 1
                (victim,) = evict(policy)
                del resident[victim]
            policy.add(key, nbytes=nbytes, load_seconds=load_s)
            resident[key] = (load_s + LOAD_OVERHEAD_S) / nbytes
        policy.touch(key)
    return checked


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decayed_cost_ranks_by_faded_uses_times_cost_as_the_cache_grows(seed: int) -> None:
    policy: DecayedCost[str] = DecayedCost(per_model=5.0)

    def by_uses(cost: dict[str, float]) -> list[str]:
        return sorted(cost, key=lambda key: policy.uses(key) * cost[key])

    # Uses counted before the cache fills weigh by a shorter tau than those after.
    for key, _, _ in _stream(seed + 10, requests=40):
        policy.touch(key)
    assert _replay_checking_order(policy, seed, by_uses) > 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_cost_ranks_by_the_chosen_memory_as_the_choice_moves(seed: int) -> None:
    policy: AdaptiveCost[str] = AdaptiveCost(per_model=(1.0, 8.0, 64.0), horizon=20)
    chosen: set[float] = set()

    def by_chosen(cost: dict[str, float]) -> list[str]:
        chosen.add(policy.chosen_per_model)
        uses = policy._chosen.policy.uses  # the memory ranking now, against its kept order
        return sorted(cost, key=lambda key: uses(key) * cost[key])

    assert _replay_checking_order(policy, seed, by_chosen) > 100
    assert len(chosen) > 1  # the choice moved during the stream
