"""Eviction policies by name, as ``--eviction`` names them; each module holds one policy."""

from __future__ import annotations

import time
from collections.abc import Callable

from tenantserve.cache.eviction import LRU, CostAware, EvictionPolicy
from tenantserve.cache.policies.adaptive_cost import AdaptiveCost
from tenantserve.cache.policies.decayed_cost import DecayedCost
from tenantserve.cache.policies.s3fifo import S3FIFO
from tenantserve.cache.policies.sieve import Sieve
from tenantserve.cache.policies.sketch import FrequencySketch
from tenantserve.cache.policies.tinylfu import WTinyLFU
from tenantserve.types import ModelId

NAMES = ("lru", "cost", "decayed-cost", "adaptive-cost", "s3fifo", "sieve", "wtinylfu")
"""Every policy the server runs (config.Settings.eviction lists the same names)."""


def make_policy(
    name: str, *, min_residency_s: float = 0.0, clock: Callable[[], float] = time.monotonic
) -> EvictionPolicy[ModelId]:
    """A new policy ``name``; ``min_residency_s`` and ``clock`` are the cost policy's."""
    if name == "lru":
        return LRU()
    if name == "cost":
        return CostAware(min_residency_s=min_residency_s, clock=clock)
    if name == "decayed-cost":
        return DecayedCost()
    if name == "adaptive-cost":
        return AdaptiveCost()
    if name == "s3fifo":
        return S3FIFO()
    if name == "sieve":
        return Sieve()
    if name == "wtinylfu":
        return WTinyLFU()
    raise ValueError(f"unknown eviction policy {name!r}; choose one of {', '.join(NAMES)}")


__all__ = [
    "NAMES",
    "S3FIFO",
    "AdaptiveCost",
    "DecayedCost",
    "FrequencySketch",
    "Sieve",
    "WTinyLFU",
    "make_policy",
]
