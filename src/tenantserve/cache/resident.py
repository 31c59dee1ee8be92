"""Resident: one loaded model in the cache's index, with its leases, pin and use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tenantserve.runtimes import LoadedModel
from tenantserve.types import ModelId, ModelStatus

FRESH_S = 1.0
"""How long a model loaded for requests is kept from eviction until one of them takes it."""


@dataclass(slots=True, eq=False)
class Resident:
    model_id: ModelId
    model: LoadedModel
    nbytes: int
    labels: tuple[str, ...] | None
    load_seconds: float
    note: str = ""  # how it loaded when not the fast way, and why
    pinned: bool = False
    leases: int = 0
    hits: int = 0
    last_used_s: float = field(default_factory=time.time)
    loaded_at: float = field(default_factory=time.monotonic)
    draining: bool = False  # unloaded or evicted while leased: closed by the last lease

    def fresh(self, now: float) -> bool:
        """Loaded under a second ago and not yet used: its waiters are about to take it."""
        return self.hits == 0 and now - self.loaded_at < FRESH_S

    def status(self) -> ModelStatus:
        return ModelStatus(
            model_id=self.model_id.value,
            state="ready",
            nbytes=self.nbytes,
            pinned=self.pinned,
            in_flight=self.leases,
            hits=self.hits,
            last_used_s=self.last_used_s,
            load_seconds=self.load_seconds,
            note=self.note,
        )
