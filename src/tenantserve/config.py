"""Settings: every knob, typed, read once from arguments and TENANTSERVE_* environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}  # fmt: skip


def parse_size(text: str | int) -> int:
    """``"4GiB"`` → 4294967296, ``"500MB"`` → 500000000, ``1024`` → 1024."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 4GiB, 512MiB, 500MB or 1048576")
    unit = (match.group(2) or "").upper().removesuffix("B") if match.group(2) != "B" else "B"
    return int(float(match.group(1)) * _UNITS[unit])


class Settings(BaseSettings):
    """Server configuration. Each field is also the environment variable TENANTSERVE_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="TENANTSERVE_", frozen=True)

    store: str = "./models"
    """Model store: a local folder or an fsspec URL (``s3://bucket/prefix``)."""
    memory_budget_bytes: int = Field(default=4 * 1024**3, gt=0)
    """Bytes resident models may hold in all (measured at load, not file size)."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default so nothing is exposed by accident."""
    port: int = Field(default=8080, ge=0, le=65535)
    preload: tuple[str, ...] = ()
    """Model ids to load at start-up."""
    pin: tuple[str, ...] = ()
    """Model ids to load at start-up and never evict."""
    cache_dir: Path = (
        Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tenantserve"
    )
    """Local disk copy of remote artifacts."""
    disk_cache_bytes: int = Field(default=20 * 1024**3, gt=0)
    """Bytes the local disk copy may take before least-recently-used copies are removed."""
    store_retry_deadline_s: float = Field(default=20.0, gt=0)
    """How long a store read retries transient errors (5xx, resets, SlowDown) before failing."""
    eviction: Literal["lru", "cost"] = "lru"
    """Victim choice when the budget is full: least recently used, or cost-aware (GDSF:
    reload cost per byte and frequency)."""
    min_residency_s: float = Field(default=5.0, ge=0)
    """Cost-aware eviction offers models younger than this last, against thrash."""
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    """Threads that run predictions: a fixed budget, whatever the number of models."""
    max_concurrent_loads: int = Field(default=2, gt=0)
    """Model loads that may run at once; other first calls wait their turn."""
    max_in_flight: int = Field(default=256, gt=0)
    """Requests admitted at once; past it requests queue."""
    queue_timeout_s: float = Field(default=5.0, gt=0)
    """How long a request may wait for admission before a 503 with Retry-After."""
    load_wait_s: float = Field(default=60.0, gt=0)
    """How long a request may wait for its model to load before a retryable error."""
    failed_load_ttl_s: float = Field(default=30.0, ge=0)
    """How long a failed load is remembered (and answered from memory) before a retry."""
    max_body_bytes: int = Field(default=6 * 1024 * 1024, gt=0)
    """Largest request body accepted (SageMaker's limit is 6 MiB)."""
    log_level: str = "info"

    @field_validator("memory_budget_bytes", "disk_cache_bytes", "max_body_bytes", mode="before")
    @classmethod
    def _sizes(cls, value: str | int) -> int:
        return parse_size(value)
