"""The model cache: which models are resident, within a byte budget (not a response cache)."""

from __future__ import annotations

from tenantserve.cache.budget import MemoryBudget
from tenantserve.cache.eviction import LRU, CostAware, EvictionPolicy
from tenantserve.cache.load_queue import LoadQueue
from tenantserve.cache.loader import Loader
from tenantserve.cache.model_cache import ModelCache

__all__ = [
    "LRU",
    "CostAware",
    "EvictionPolicy",
    "LoadQueue",
    "Loader",
    "MemoryBudget",
    "ModelCache",
]
