"""Resident: one loaded model in the cache's index, with its leases, pin and use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tenantserve.runtimes import LoadedModel
from tenantserve.types import ModelId


@dataclass(slots=True, eq=False)
class Resident:
    model_id: ModelId
    model: LoadedModel
    nbytes: int
    labels: tuple[str, ...] | None
    load_seconds: float
    pinned: bool = False
    leases: int = 0
    hits: int = 0
    last_used_s: float = field(default_factory=time.time)
    draining: bool = False  # unloaded or evicted while leased: closed by the last lease
