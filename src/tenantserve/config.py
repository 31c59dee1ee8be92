"""Settings: every knob, typed, read once from arguments and TENANTSERVE_* environment variables."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
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
    memory_budget: int = Field(default=4 * 1024**3, gt=0)
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
    disk_cache: int = Field(default=20 * 1024**3, gt=0)
    """Bytes the local disk copy may take before least-recently-used copies are removed."""
    store_retry_deadline_s: float = Field(default=20.0, gt=0)
    """How long a store read retries transient errors (5xx, resets, SlowDown) before failing."""
    store_read_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds an S3 read may go without a byte before it is cut and retried (a stall); a
    slow download that keeps moving is never cut."""
    store_verify_etag: bool = True
    """Refuse a downloaded object whose MD5 differs from its MD5-form ETag (single-part
    uploads); turn off for buckets under SSE-KMS or SSE-C, whose ETags are not MD5s."""
    eviction: Literal["lru", "cost"] = "lru"
    """Victim choice when the budget is full: least recently used, or cost-aware (GDSF:
    reload cost per byte and frequency)."""
    min_residency_s: float = Field(default=1.0, ge=0)
    """Cost-aware eviction offers models younger than this last, against thrash. Kept short: a
    model loaded in the last ``min_residency_s`` outranks every older one as a victim's last
    resort, so a long age hands the budget to one-hit models when loads come fast (replaying the
    quarter-budget benchmark's trace, 5 s cut the cost policy's hit ratio from 0.786 to 0.725;
    LRU's was 0.720)."""
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
    predict_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds one prediction may run (SageMaker's invocation limit); past it the caller gets
    504 (SageMaker: ModelError) and the run is told to stop, freeing its thread."""
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    """Seconds from SIGTERM to exit at most: requests in flight finish, then models unload;
    keep it at or under the orchestrator's kill timeout (Kubernetes: 30)."""
    shutdown_drain_s: float = Field(default=0.0, ge=0)
    """Seconds, within the grace period, that the server still takes new connections after
    SIGTERM turns readiness to 503, so a load balancer stops routing here first."""
    max_body: int = Field(default=6 * 1024 * 1024, gt=0)
    """Largest request body accepted (SageMaker's limit is 6 MiB)."""
    log_level: str = "info"
    top_models: int = Field(default=10, ge=0)
    """Models by traffic that get their own ``model`` label on per-model metrics; the rest
    are ``other``, so series stay bounded however many models there are."""

    # -- tenant isolation (docs/isolation.md) -----------------------------------------------
    api_keys: Path | None = None
    """JSON or TOML file of API keys: each key's scopes (``acme/*``), roles (``invoke``,
    ``manage``, ``metrics``) and optional AWS access key pair for SigV4 (boto3) clients."""
    api_keys_json: SecretStr | None = None
    """The same document as ``api_keys``, inline as JSON (for secrets passed as environment)."""
    insecure_no_auth: bool = False
    """Serve without authentication on a non-loopback address (loopback never needs this)."""
    protect_metrics: bool = False
    """``/metrics`` needs a key with the ``metrics`` role (it is open otherwise)."""
    tenant_limits: Path | None = None
    """JSON or TOML file of per-tenant quotas: a ``default`` table and ``tenants.<name>``
    overrides of ``rate_per_s``, ``burst``, ``max_concurrent``, ``max_memory_fraction``,
    ``max_memory_bytes``."""
    tenant_rate_per_s: float = Field(default=0.0, ge=0)
    """Default requests per second per tenant (token bucket); 0 for no rate limit."""
    tenant_burst: float | None = Field(default=None, gt=0)
    """Default bucket size: requests a tenant may send at once above its rate."""
    tenant_max_concurrent: int = Field(default=0, ge=0)
    """Default requests one tenant may have in flight; 0 for no cap of its own."""
    tenant_max_memory_fraction: float = Field(default=1.0, gt=0, le=1)
    """Share of the memory budget one tenant's models may hold (1 = the whole budget)."""
    max_queued_loads: int = Field(default=32, ge=0)
    """Distinct models that may wait for a load slot; first calls past it are refused at once
    (SageMaker 429, OIP 503, with Retry-After) so a load storm cannot pile up."""
    max_loads_per_s: float = Field(default=0.0, ge=0)
    """Model loads started per second at most (0: as fast as load slots free up); keeps a
    storm of first calls from taking the CPU warm traffic needs."""
    top_tenants: int = Field(default=10, ge=0)
    """Tenants by traffic that get their own ``tenant`` label on metrics; the rest are
    ``other``."""

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @model_validator(mode="after")
    def _auth_or_loopback(self) -> Settings:
        if self.loopback or self.insecure_no_auth:
            return self
        if self.api_keys is None and self.api_keys_json is None:
            raise ValueError(
                f"refusing to serve on {self.host} without authentication: give API keys with "
                "--api-keys FILE (or TENANTSERVE_API_KEYS), or pass --insecure-no-auth to "
                "let anyone who can reach the port use and manage every model"
            )
        return self

    @model_validator(mode="after")
    def _drain_within_grace(self) -> Settings:
        if self.shutdown_drain_s >= self.shutdown_grace_s:
            raise ValueError(
                f"shutdown_drain_s ({self.shutdown_drain_s:g}) must be shorter than "
                f"shutdown_grace_s ({self.shutdown_grace_s:g}): the drain is part of the grace "
                "period"
            )
        return self

    @field_validator("memory_budget", "disk_cache", "max_body", mode="before")
    @classmethod
    def _sizes(cls, value: str | int) -> int:
        return parse_size(value)
