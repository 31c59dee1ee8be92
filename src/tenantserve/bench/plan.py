"""Capacity planning: a fleet profile and a trace, replayed through the real cache per instance."""

from __future__ import annotations

import heapq
import math
import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tenantserve import memory
from tenantserve.bench.replay import replay
from tenantserve.runtimes import default_runtimes, runtime_for
from tenantserve.store import open_store
from tenantserve.types import DATATYPE_TO_DTYPE, ModelId, TensorSpec

# What one request costs a core beyond the model itself (HTTP parsing, JSON, routing):
# 2 cores / 1,565 req/s measured with wrk on a resident model (benchmarks/RESULTS.md).
DEFAULT_REQUEST_CPU_S = 0.0013


@dataclass(frozen=True, slots=True)
class ModelCost:
    """What one model costs: bytes resident, seconds to load, seconds per inference."""

    resident_bytes: int
    load_s: float
    inference_s: float


@dataclass(frozen=True)
class FleetProfile:
    """Every model's cost; measured on a sample and scaled by file size for the rest."""

    models: dict[str, ModelCost]
    measured: int

    def save(self, path: Path) -> None:
        doc = {"measured": self.measured, "models": {k: asdict(v) for k, v in self.models.items()}}
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, path: Path) -> FleetProfile:
        doc: Any = orjson.loads(path.read_bytes())
        models = {k: ModelCost(**v) for k, v in doc["models"].items()}
        return cls(models, int(doc["measured"]))


def _zeros(spec: TensorSpec) -> Any:
    shape = [1 if dim < 0 else dim for dim in spec.shape] or [1]
    if spec.datatype == "BYTES":
        return np.full(shape, "how do I reset my password", dtype=object)
    return np.zeros(shape, dtype=DATATYPE_TO_DTYPE[spec.datatype])


def profile_store(store_url: str, *, sample: int = 12, cache_dir: Path) -> FleetProfile:
    """Measure ``sample`` models for real (RSS growth, load time, one inference); scale the rest.

    Sizes scale with the artifact's bytes on disk, the ratio taken from the measured sample.
    """
    store = open_store(store_url, cache_dir=cache_dir, max_cache_bytes=64 * 1024**3)
    ids = store.list("")
    if not ids:
        raise ValueError(f"no models found in {store_url}")
    runtimes = default_runtimes()
    for runtime in runtimes.values():
        runtime.warm_up()
    disk = {model_id: store.fetch(ModelId.parse(model_id)) for model_id in ids}
    step = max(1, len(ids) // sample)
    measured: dict[str, ModelCost] = {}
    held = []  # keep sessions alive so each RSS delta is that model's own
    for model_id in ids[::step][:sample]:
        # Timed as the server loads: fetch, then trim / load / trim (its size measurement).
        started = time.perf_counter()
        artifact = store.fetch(ModelId.parse(model_id))
        runtime = runtime_for(runtimes, artifact.manifest)
        memory.trim()
        before = memory.rss_bytes()
        model = runtime.load(artifact.path, artifact.manifest)
        memory.trim()
        load_s = time.perf_counter() - started
        grown = max(memory.rss_bytes() - before, artifact.nbytes)
        feed = {spec.name: _zeros(spec) for spec in model.inputs}
        model.predict(feed)  # first run allocates; time the second
        started = time.perf_counter()
        model.predict(feed)
        measured[model_id] = ModelCost(grown, load_s, time.perf_counter() - started)
        held.append(model)
    # Under a full budget every load also evicts: the server closes the victim and trims.
    releases = []
    for model in held:
        started = time.perf_counter()
        model.close()
        memory.trim()
        releases.append(time.perf_counter() - started)
    release_s = statistics.median(releases)
    measured = {
        m: ModelCost(c.resident_bytes, c.load_s + release_s, c.inference_s)
        for m, c in measured.items()
    }
    ratio = statistics.median(c.resident_bytes / disk[m].nbytes for m, c in measured.items())
    load_per_byte = statistics.median(c.load_s / disk[m].nbytes for m, c in measured.items())
    inference_s = statistics.median(c.inference_s for c in measured.values())
    models = {
        model_id: measured.get(model_id)
        or ModelCost(int(artifact.nbytes * ratio), artifact.nbytes * load_per_byte, inference_s)
        for model_id, artifact in disk.items()
    }
    return FleetProfile(models, len(measured))


@dataclass(frozen=True, slots=True)
class InstanceType:
    """An instance size: memory (bytes) and cores. Written ``8GiB:2``."""

    memory_bytes: int
    cores: int
    label: str


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a fleet of ``instances`` times ``instance`` is predicted to do with the trace."""

    instance: str
    instances: int
    hit_ratio: float
    cold_starts_per_min: float
    p50_s: float
    p99_s: float
    requests: int
    meets_target: bool


def simulate(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance: InstanceType,
    *,
    instances: int = 1,
    overhead_bytes: int = 512 * 1024**2,
    policy: str = "lru",
    request_cpu_s: float = DEFAULT_REQUEST_CPU_S,
    load_slots: int = 1,
    min_residency_s: float = 1.0,
    p99_target_s: float = math.inf,
) -> Prediction:
    """Split ``trace`` over ``instances`` by model (affinity routing), replay each share through
    the real cache, then queue each share's requests on the instance's cores.

    ``min_residency_s`` is the server's default (``--min-residency-s``) for the cost policy.
    ``load_slots`` is 1 by default: the server fetches up to two models at once, but its runtime
    loads run one at a time (each measures its own RSS growth under one lock)."""
    budget = instance.memory_bytes - overhead_bytes
    if budget <= 0:
        raise ValueError(f"{instance.label}: the overhead leaves no memory for models")
    shares: list[list[tuple[float, str]]] = [[] for _ in range(instances)]
    for t_s, model_id in trace:
        shares[zlib.crc32(model_id.encode()) % instances].append((t_s, model_id))
    sizes = {m: c.resident_bytes for m, c in profile.models.items()}
    loads = {m: c.load_s for m, c in profile.models.items()}
    latencies: list[float] = []
    hits = cold = 0
    for share in shares:
        if not share:
            continue
        result = replay(
            share, sizes=sizes, budget_bytes=budget, policy=policy, load_seconds=loads,
            min_residency_s=min_residency_s, record_hits=True,
        )  # fmt: skip
        hits += result.hits
        cold += result.loads
        latencies.extend(
            _queue(share, result.hit_flags, profile, instance.cores, request_cpu_s, load_slots)
        )
    duration_min = max(trace[-1][0] - trace[0][0], 1e-9) / 60 if trace else 1.0
    latencies.sort()
    p99 = _pct(latencies, 0.99)
    return Prediction(
        instance=instance.label, instances=instances,
        hit_ratio=hits / len(trace) if trace else 0.0,
        cold_starts_per_min=cold / duration_min,
        p50_s=_pct(latencies, 0.5), p99_s=p99, requests=len(trace),
        meets_target=p99 <= p99_target_s,
    )  # fmt: skip


def _queue(
    share: Sequence[tuple[float, str]],
    hit_flags: Sequence[bool],
    profile: FleetProfile,
    cores: int,
    request_cpu_s: float,
    load_slots: int,
) -> list[float]:
    """FIFO on ``cores``; a cold request first waits for one of ``load_slots`` (single-flight:
    later requests for a model that is loading wait for that load). A load holds a core for
    its whole time too: on a small instance loads and requests take the same CPU."""
    core_free = [0.0] * cores
    slot_free = [0.0] * load_slots
    ready_at: dict[str, float] = {}
    out = []
    for (t_s, model_id), hit in zip(share, hit_flags, strict=True):
        cost = profile.models[model_id]
        ready = max(t_s, ready_at.get(model_id, 0.0))
        if not hit:
            slot = heapq.heappop(slot_free)
            core = heapq.heappop(core_free)
            ready = max(t_s, slot, core) + cost.load_s
            heapq.heappush(slot_free, ready)
            heapq.heappush(core_free, ready)
            ready_at[model_id] = ready
        start = max(ready, heapq.heappop(core_free))
        finish = start + request_cpu_s + cost.inference_s
        heapq.heappush(core_free, finish)
        out.append(finish - t_s)
    return out


def _pct(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def plan(
    trace: Sequence[tuple[float, str]],
    profile: FleetProfile,
    instance_types: Sequence[InstanceType],
    *,
    p99_target_s: float,
    max_instances: int = 64,
    **options: Any,
) -> list[Prediction]:
    """For each instance type, the fewest instances whose predicted p99 meets the target."""
    rows = []
    for instance in instance_types:
        found = None
        for count in range(1, max_instances + 1):
            found = simulate(
                trace, profile, instance, instances=count, p99_target_s=p99_target_s, **options
            )
            if found.meets_target:
                break
        assert found is not None
        rows.append(found)
    return rows
