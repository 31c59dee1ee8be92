"""Settings: every knob, typed, read once from arguments and TENANTSERVE_* environment variables.

One name per setting: the field ``memory_budget`` is the flag ``--memory-budget`` and the
variable ``TENANTSERVE_MEMORY_BUDGET`` in every entry point (``tenantserve serve``,
``tenantserve ray deploy``, the Ray Serve config's app builder). Entry points build Settings
with :func:`load_settings`, which also refuses unknown ``TENANTSERVE_*`` variables.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

from tenantserve.errors import InvalidModelId
from tenantserve.types import ModelId
from tenantserve.units import parse_size

ENV_PREFIX = "TENANTSERVE_"

PROJECT_VARIABLES: Mapping[str, str] = {
    "TENANTSERVE_URL": "server address of `tenantserve status` and `models` (tools/remote/cli.py)",
    "TENANTSERVE_API_KEY": "API key of `tenantserve status` and `models` (tools/remote/cli.py)",
    "TENANTSERVE_DATASETS": "datasets folder of `tenantserve fleet build` (tools/fleet/cli.py), "
    "examples/demo.py, benchmarks/bench_fleet.py and the tests",
    "TENANTSERVE_SAGEMAKER_ROOT": "the folder `tenantserve sagemaker serve` takes for SageMaker's "
    "/opt/ml (cli/sagemaker.py)",
}
"""The ``TENANTSERVE_*`` variables that are not settings, and what reads them; every other
unknown name in the prefix is refused. The tests' own knobs (``FUZZ_EXAMPLES``,
``UPDATE_SCREENSHOT``) are outside it: tests start servers with their environment, and the
product should not list its tests' switches."""


def _listed(value: object) -> object:
    """Model ids from a variable: separated by spaces, or a JSON list."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.lstrip().startswith("[") else value.split()
    except json.JSONDecodeError:
        raise ValueError(f"{value!r} is not a JSON list (or write ids apart by spaces)") from None


SIZE = BeforeValidator(parse_size)
Size = Annotated[int, SIZE]
"""Bytes, written with units (``4GiB``); an int of bytes once parsed."""
Listed = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_listed)]
"""Repeatable on the command line; one variable of space-separated values."""


class Settings(BaseSettings):
    """Server configuration. Each field is also the flag ``--<name>`` and the environment
    variable ``TENANTSERVE_<NAME>``; its docstring's first paragraph is the flag's help."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, use_attribute_docstrings=True
    )

    store: str = "./models"
    """Model store: a local folder or an fsspec URL (``s3://bucket/prefix``). A model id is an
    artifact's path under it, e.g. ``acme/macros``."""
    default_model: str | None = None
    """Model id that SageMaker's ``/invocations`` serves when no X-Amzn-SageMaker-Target-Model
    header names one, as a single-model endpoint calls it; without it such a call is a 400."""
    memory_budget: Size = Field(default=4 * 1024**3, gt=0)
    """Bytes resident models may hold in all, measured at load, not file size (``4GiB``,
    ``512MiB`` …); models are evicted to stay within it."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default so nothing is exposed by accident."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port."""
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """TCP port of the KServe Open Inference Protocol v2 gRPC service (tritonclient.grpc and
    other OIP gRPC clients), on the same interface and with the same keys as HTTP; off unless
    given (docs/grpc.md)."""
    preload: Listed = ()
    """Model ids to load at start-up (patterns such as ``acme/*`` work)."""
    pin: Listed = ()
    """Model ids to load at start-up and never evict (patterns work)."""
    cache_dir: Path = (
        Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tenantserve"
    )
    """Local disk copy of remote artifacts."""
    disk_cache: Size = Field(default=20 * 1024**3, gt=0)
    """Bytes the local disk copy may take before least-recently-used copies are removed."""
    store_retry_deadline_s: float = Field(default=20.0, gt=0)
    """How long a store read retries transient errors (5xx, resets, SlowDown) before failing."""
    store_read_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds an S3 read may go without a byte before it is cut and retried (a stall); a
    slow download that keeps moving is never cut."""
    store_verify_etag: bool = True
    """Refuse a downloaded object whose MD5 differs from its MD5-form ETag (single-part
    uploads); turn off for buckets under SSE-KMS or SSE-C, whose ETags are not MD5s."""
    eviction: Literal[
        "lru", "cost", "decayed-cost", "adaptive-cost", "s3fifo", "sieve", "wtinylfu"
    ] = "adaptive-cost"
    """Victim choice when the budget is full. ``adaptive-cost`` (the default): fewest recent
    uses per byte of reload cost, uses fading at the pace that recent requests reward; it
    matched or beat LRU, S3-FIFO, SIEVE and W-TinyLFU on stable, shifting and flat Zipf traces
    at 1/8, 1/4 and 1/2 of the fleet (benchmarks/RESULTS.md, "Eviction policies").
    ``decayed-cost``: the same with one fixed pace. ``cost``: GDSF (reload cost per byte and
    frequency, ``--min-residency-s``). ``lru``, ``s3fifo``, ``sieve``, ``wtinylfu``: the
    published policies, by model bytes."""
    min_residency_s: float = Field(default=1.0, ge=0)
    """Cost-aware eviction (``--eviction cost``) offers models younger than this last, against
    thrash.

    Kept short: a model loaded in the last ``min_residency_s`` outranks every older one as a
    victim's last resort, so a long age hands the budget to one-hit models when loads come fast
    (replaying the quarter-budget benchmark's trace, 5 s cut the cost policy's hit ratio from
    0.786 to 0.725; LRU's was 0.720)."""
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    """Threads that run predictions (default: one per core): a fixed budget, whatever the number
    of models."""
    max_concurrent_loads: int = Field(default_factory=lambda: os.cpu_count() or 1, gt=0)
    """Model loads that may run at once (default: one per core); other first calls wait their
    turn. A model whose size its runtime knows (an ORT-format file, mapped) loads beside
    others; one that must be measured loads alone."""
    load_nice: int = Field(default=10, ge=0, le=19)
    """How far below predictions the OS schedules model loads, store reads and heap trims (a
    nice increment for their threads; 0: the same priority), so a storm of first calls takes
    the cores only when warm predictions leave them idle."""
    prepack: bool = False
    """Pre-pack each model's weights at load for faster products over many rows (ONNX
    Runtime's default): a packed copy of the weights, and most of a load's time. Shared bases
    are always pre-packed."""
    max_in_flight: int = Field(default=256, gt=0)
    """Requests admitted at once; past it requests queue."""
    queue_timeout_s: float = Field(default=5.0, gt=0)
    """How long a request may wait for admission before a 503 with Retry-After."""
    queue_target_s: float = Field(default=0.1, ge=0)
    """Queue wait the server aims for (CoDel): when every request waited longer than this in
    queues for half a second, the queue is standing (overload), and a request may wait twice
    this at most before a 503 with Retry-After, so admitted requests stay fast. 0: off."""
    load_target_s: float = Field(default=0.5, ge=0)
    """Wait for a load slot the server aims for (CoDel, as --queue-target-s for requests):
    when every load waited longer than this for half a second, loads stand, and a first call
    may wait twice this at most before a 503 with Retry-After. Loads take tens of ms, not a
    prediction's one: 16 clients starting on a cold fleet queue theirs for half a second on
    2 cores, a cold start to serve, not to refuse. 0: off."""
    load_wait_s: float = Field(default=60.0, gt=0)
    """How long a request may wait for its model to load before a retryable error."""
    failed_load_ttl_s: float = Field(default=30.0, ge=0)
    """How long a failed load is remembered (and answered from memory) before a retry."""
    max_batch_size: int = Field(default=8, ge=1)
    """Requests that may run as one batch (1: no batching): of one model, or of tenants' heads
    on one shared base. A batch forms while its requests wait for a predict thread, so an idle
    server runs each at once; only models whose inputs and outputs have a free first
    dimension batch."""
    max_batch_delay_ms: float = Field(default=0.0, ge=0)
    """How long a batch may wait for company even when a thread is free (0: it takes only the
    requests already queued, adding no latency)."""
    predict_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds one prediction may run (SageMaker's invocation limit); past it the caller gets
    504 (SageMaker: ModelError) and the run is told to stop, freeing its thread."""
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    """Seconds from SIGTERM to exit at most: requests in flight finish, then models unload;
    keep it at or under the orchestrator's kill timeout (Kubernetes: 30)."""
    shutdown_drain_s: float = Field(default=0.0, ge=0)
    """Seconds, within the grace period, that the server still takes new connections after
    SIGTERM turns readiness to 503, so a load balancer stops routing here first."""
    body_timeout_s: float = Field(default=30.0, gt=0)
    """Seconds a request body may take to arrive after its head; a slower one gets 408 (a
    slow-loris guard; the head has its own 30 s)."""
    max_connections: int = Field(default=2048, gt=0)
    """Open connections at most; one past it gets 503 with Retry-After at once, before a
    byte of it is read. Keep it under the process's open-file limit."""
    max_body: Size = Field(default=6 * 1024 * 1024, gt=0)
    """Largest request body accepted (SageMaker's limit is 6 MiB)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """How much the server logs (JSON lines on stderr)."""
    top_models: int = Field(default=10, ge=0)
    """Models by traffic that get their own ``model`` label on per-model metrics; the rest
    are ``other``, so series stay bounded however many models there are."""

    # -- tenant isolation (docs/isolation.md) -----------------------------------------------
    api_keys: Path | None = None
    """JSON or TOML file of API keys: each key's scopes (``acme/*``), roles (``invoke``,
    ``manage``, ``metrics``) and optional AWS access key pair for SigV4 (boto3) clients (see
    docs/isolation.md). Clients send ``Authorization: Bearer <key>`` or ``X-Api-Key``. Required
    unless bound to loopback."""
    api_keys_json: SecretStr | None = None
    """The same document as ``api_keys``, inline as JSON; a secret, so a variable only."""
    insecure_no_auth: bool = False
    """Serve without authentication on a non-loopback address (loopback never needs this)."""
    allowed_hosts: Listed = ()
    """Host names, besides loopback, that a server without API keys answers (a DNS-rebinding
    guard: e.g. a name for this machine in /etc/hosts). With keys on, any Host is answered."""
    open_metrics: bool = False
    """With API keys on, serve ``/metrics`` without a key too. It names model ids and tenants,
    so by default it needs a key with the ``metrics`` role; without keys it is always open."""
    tenant_limits: Path | None = None
    """JSON or TOML file of per-tenant quotas: a ``default`` table and ``tenants.<name>``
    overrides of ``rate_per_s``, ``burst``, ``max_concurrent``, ``max_memory_fraction``,
    ``max_memory_bytes``."""
    tenant_rate_per_s: float = Field(default=0.0, ge=0)
    """Default requests per second per tenant (token bucket); 0 for no rate limit."""
    tenant_burst: float | None = Field(default=None, gt=0)
    """Default bucket size: requests a tenant may send at once above its rate (default: one
    second's worth)."""
    tenant_max_concurrent: int = Field(default=0, ge=0)
    """Default requests one tenant may have in flight; 0 for no cap of its own."""
    tenant_max_memory_fraction: float = Field(default=1.0, gt=0, le=1)
    """Default share of the memory budget one tenant's models may hold (1 = the whole budget);
    a tenant at its share evicts its own models first."""
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
        if not self.loopback:
            self.require_auth(f"on {self.host}")
        return self

    def require_auth(self, where: str) -> None:
        """Refuse to serve ``where`` (a listener that may be reachable from elsewhere) without
        API keys, unless ``insecure_no_auth`` says so explicitly.

        Raises:
            ValueError: no keys, and no explicit ``insecure_no_auth``.
        """
        if self.insecure_no_auth or self.api_keys is not None or self.api_keys_json is not None:
            return
        raise ValueError(
            f"refusing to serve {where} without authentication: give API keys with "
            f"{public_name('api_keys')} or {env_name('api_keys_json')}, or pass "
            f"{public_name('insecure_no_auth')} to let anyone who can reach the port use "
            "and manage every model"
        )

    @model_validator(mode="after")
    def _drain_within_grace(self) -> Settings:
        if self.shutdown_drain_s >= self.shutdown_grace_s:
            raise ValueError(
                f"{public_name('shutdown_drain_s')} ({self.shutdown_drain_s:g}) must be shorter "
                f"than {public_name('shutdown_grace_s')} ({self.shutdown_grace_s:g}): the drain "
                "is part of the grace period"
            )
        return self

    @field_validator("default_model")
    @classmethod
    def _model_id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ModelId.parse(value)
            except InvalidModelId as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


# -- names: flag, variable, and the check of the environment ------------------------------------


def env_name(field: str) -> str:
    """``memory_budget`` → ``TENANTSERVE_MEMORY_BUDGET``."""
    return f"{ENV_PREFIX}{field.upper()}"


def flag(field: str) -> str | None:
    """``memory_budget`` → ``--memory-budget``; ``None`` for a secret, which is a variable only
    (a command line shows in ``ps``)."""
    annotation = Settings.model_fields[field].annotation
    if annotation is SecretStr or SecretStr in get_args(annotation):
        return None
    return "--" + field.replace("_", "-")


def public_name(field: str) -> str:
    """How messages name a setting: ``--memory-budget (TENANTSERVE_MEMORY_BUDGET)``."""
    option = flag(field)
    return f"{option} ({env_name(field)})" if option else env_name(field)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``TENANTSERVE_*`` name in ``environ`` that nothing reads, with the nearest
    valid name. Names compare upper-cased, as the settings read them case-insensitively."""
    valid = {env_name(field) for field in Settings.model_fields} | set(PROJECT_VARIABLES)
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in valid:
            continue
        # Compare without the shared prefix, which would make every name look close.
        near = difflib.get_close_matches(
            upper.removeprefix(ENV_PREFIX), [v.removeprefix(ENV_PREFIX) for v in valid], n=1
        )
        hint = f"did you mean {ENV_PREFIX}{near[0]}?" if near else "not a setting"
        problems.append(f"unknown variable {name}; {hint} (see tenantserve serve --help)")
    return problems


class SettingsError(ValueError):
    """Settings that cannot start a server; ``problems`` has one line for each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_settings(
    given: Mapping[str, object] | None = None, *, defaults: Mapping[str, object] | None = None
) -> Settings:
    """Settings for an entry point: ``given`` (its command line) over the environment, over
    ``defaults`` (the entry point's own, where they differ from the fields'), over the fields'.

    Raises:
        SettingsError: unknown ``TENANTSERVE_*`` variables, or values that do not validate,
            each named by flag and variable, never by field.
    """
    problems = unknown_variables(os.environ)
    values: dict[str, Any] = dict(given or {})
    settings = None
    try:
        settings = Settings(**values)
        unset: dict[str, Any] = {
            k: v for k, v in (defaults or {}).items() if k not in settings.model_fields_set
        }
        if unset:  # neither given nor in the environment: the entry point's default
            settings = Settings(**{**unset, **values})
    except ValidationError as exc:
        problems += [_describe(error) for error in exc.errors()]
    except EnvParseError as exc:
        problems.append(str(exc))
    if problems or settings is None:
        raise SettingsError(problems)
    return settings


def _describe(error: Any) -> str:
    """One validation error as a line naming the setting's flag and variable."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message  # a rule across fields, which names its fields itself
    field = str(error["loc"][0])
    if error["type"] != "value_error" and flag(field) is not None:  # never echo a secret
        message = f"{error['input']!r}: {message[:1].lower()}{message[1:]}"
    return f"{public_name(field)}: {message}"
