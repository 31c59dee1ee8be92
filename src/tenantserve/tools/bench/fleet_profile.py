"""A fleet profile: what each model costs in memory, load time and inference time."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tenantserve.cache.sizes import Sizes
from tenantserve.runtimes import default_runtimes, runtime_for
from tenantserve.store import open_store
from tenantserve.store.disk_cache import DiskCache
from tenantserve.types import DATATYPE_TO_DTYPE, ModelId, TensorSpec


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
    load_hold: float = 1.0
    """How many times its own time (``load_s``) a load holds its slot in a server under
    traffic (see :mod:`~tenantserve.tools.bench.load_hold`); 1: as alone."""

    @property
    def total_bytes(self) -> int:
        """What every model held at once would take."""
        return sum(cost.resident_bytes for cost in self.models.values())

    def save(self, path: Path) -> None:
        models = {k: asdict(v) for k, v in self.models.items()}
        doc = {"measured": self.measured, "load_hold": self.load_hold, "models": models}
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))

    @classmethod
    def load(cls, path: Path) -> FleetProfile:
        """Read a profile written by :meth:`save`.

        Raises:
            OSError: the file cannot be read. ValueError: it is not a fleet profile.
        """
        data = path.read_bytes()
        try:
            doc: Any = orjson.loads(data)
            models = {str(k): ModelCost(**v) for k, v in doc["models"].items()}
            profile = cls(models, int(doc["measured"]), float(doc.get("load_hold", 1.0)))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            raise ValueError(
                f"{path} is not a fleet profile (JSON with 'measured' and 'models', as "
                "written by --save-profile)"
            ) from None
        if not models:
            raise ValueError(f"{path} holds no models")
        return profile


def zeros(spec: TensorSpec) -> Any:
    """An input that fits ``spec``: zeros, or a short sentence for text (-1 dims as 1)."""
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
        raise ValueError(
            f"no models found in {store_url}: give --store a folder or URL that holds model "
            "artifacts (tenantserve fleet build makes some)"
        )
    # As the server loads: ONNX models from ORT-format files made once in its disk tier.
    runtimes = default_runtimes(DiskCache(cache_dir / "derived", max_bytes=64 * 1024**3))
    for runtime in runtimes.values():
        runtime.warm_up()
    disk = {model_id: store.fetch(ModelId.parse(model_id)) for model_id in ids}
    step = max(1, len(ids) // sample)
    measured: dict[str, ModelCost] = {}
    held = []  # keep sessions alive so each measured size is that model's own
    # Sized as the server's cache sizes them (a mapped file plus a per-shape overhead, else
    # RSS), not by the artifact's folder: a published fleet keeps model.onnx beside the ORT
    # file the server maps, and the folder's bytes were twice what a model held.
    sizes = Sizes()
    for model_id in ids[::step][:sample]:
        artifact = store.fetch(ModelId.parse(model_id))
        runtime = runtime_for(runtimes, artifact.manifest)
        # Its fast-load file made once, untimed: under a budget nearly every load is a reload.
        runtime.prepare(artifact.path, artifact.manifest)
        # Timed as the server loads on a reload: fetch (a cache hit), prepare, load; no trims
        # once a model of its shape was measured.
        started = time.perf_counter()
        artifact = store.fetch(ModelId.parse(model_id))
        prepared = runtime.prepare(artifact.path, artifact.manifest)
        shared_before = runtime.shared_usage().held_bytes
        plan = sizes.plan(artifact, prepared, 0)
        model, held_bytes = sizes.load(runtime, artifact, prepared, plan)
        load_s = time.perf_counter() - started
        # A shared base it brought in is counted with it, the first model of a base.
        grown = held_bytes + runtime.shared_usage().held_bytes - shared_before
        feed = {spec.name: zeros(spec) for spec in model.inputs}
        model.predict(feed)  # first run allocates; time the second
        started = time.perf_counter()
        model.predict(feed)
        measured[model_id] = ModelCost(grown, load_s, time.perf_counter() - started)
        held.append(model)
    # Under a full budget every load also evicts: the server closes the victim (trims run in
    # the background, off the load's path).
    releases = []
    for model in held:
        started = time.perf_counter()
        model.close()
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
