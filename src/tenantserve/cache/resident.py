"""Resident: one loaded model in the cache's index, with its leases, pin and use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tenantserve.runtimes import LoadedModel
from tenantserve.types import ModelId, ModelStatus


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
    draining: bool = False  # unloaded or evicted while leased: closed by the last lease

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
