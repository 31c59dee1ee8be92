"""How long a load holds its slot in a busy server, against its own time alone.

Alone, reloading a 10 MB model takes the server ~1 ms. Under traffic, the quarter-budget
suite run's loads held their slots ~11 ms (fetch on an I/O thread, making room on the event
loop, the load on a load thread, and the waits for each of them in between: the loop and the
cores are busy with requests, and load threads run at a lower priority), so first calls
queued for slots and took ~30 ms more than warm requests. A profile measured one load at a
time cannot see this; the planner's p99 came out a third of the measured one.

So the profile runs the real server on the store, in its reference condition (below), and
reads what its loads held from ``tenantserve_model_load_slot_seconds``: the ratio to the
loads' own time alone is the profile's ``load_hold``.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tenantserve.tools.bench import loadgen, trace_kinds
from tenantserve.tools.bench.fleet_profile import ModelCost, zeros
from tenantserve.tools.bench.harness import popularity_order
from tenantserve.tools.bench.loadgen import LoadSpec
from tenantserve.tools.bench.sampler import read_metrics
from tenantserve.tools.bench.servers import served_tenantserve
from tenantserve.types import TensorSpec

CLIENTS = 16
"""The reference condition: this many clients in a closed loop, ..."""
MODELS = 200
"""... a Zipf (s=1.1) trace over up to this many of the store's models, ..."""
HELD_SHARE = 4
"""... with a budget that holds one model in this many (the suite's quarter budget)."""
MIN_LOADS = 20
"""Fewer loads measured than this say nothing: the profile keeps 1 (as alone)."""


@dataclass(frozen=True, slots=True)
class LoadHold:
    """What the busy server's loads held their slots, against the profile's loads alone."""

    loads: int
    held_s: float
    """Mean seconds a load held its slot."""
    alone_s: float
    """The profile's median ``load_s`` over the models served."""

    @property
    def factor(self) -> float:
        """The profile's ``load_hold``: at least 1, and 1 when too few loads were seen."""
        if self.loads < MIN_LOADS or self.alone_s <= 0:
            return 1.0
        return max(1.0, self.held_s / self.alone_s)


def measure_load_hold(
    store_url: str, models: Mapping[str, ModelCost], *, work_dir: Path, duration_s: float
) -> LoadHold:
    """Serve the store under the reference traffic for ``duration_s`` (after one call to each
    model, untimed) and say how long its loads held their slots.

    Raises:
        RuntimeError, TimeoutError: the server did not start (its log says why).
    """
    ids = sorted(models)[:MODELS]
    budget = max(sum(models[m].resident_bytes for m in ids) // HELD_SHARE,
                 2 * max(models[m].resident_bytes for m in ids))  # fmt: skip
    trace = trace_kinds.zipf(ids, rate=4000, duration_s=60, seed=0, s=1.1)
    with served_tenantserve(
        store_url, budget=str(budget), log_path=work_dir / "server.log",
        cache_dir=work_dir / "cache",
    ) as served:  # fmt: skip
        # One call each, untimed: its metadata, which loads it (so later loads are reloads,
        # as in a long run) and says what a request to it carries.
        bodies = {}
        for model_id in popularity_order(trace):
            with contextlib.suppress(httpx.HTTPError):  # one that fails to load fails later too
                bodies[model_id] = _body(_metadata(served.url, model_id))
        before = read_metrics(served.url)
        spec = LoadSpec(served.url, concurrency=CLIENTS, duration_s=duration_s)
        loadgen.replay(trace, spec, bodies=bodies)
        after = read_metrics(served.url)
    loads = int(after.get("load_slots", 0.0) - before.get("load_slots", 0.0))
    held_s = (
        (after.get("load_slot_s", 0.0) - before.get("load_slot_s", 0.0)) / loads if loads else 0.0
    )
    return LoadHold(loads, held_s, statistics.median(models[m].load_s for m in ids))


def _metadata(url: str, model_id: str) -> dict[str, Any]:
    answer = httpx.get(f"{url}/v2/models/{model_id}", timeout=120)
    answer.raise_for_status()
    doc: dict[str, Any] = answer.json()
    return doc


def _body(metadata: Mapping[str, Any]) -> bytes:
    """An OIP infer body that fits a model's inputs (its metadata's)."""
    tensors = []
    for spec in metadata["inputs"]:
        value = zeros(TensorSpec(spec["name"], spec["datatype"], tuple(spec["shape"])))
        tensors.append(
            {"name": spec["name"], "datatype": spec["datatype"], "shape": list(value.shape),
             "data": value.ravel().tolist()}
        )  # fmt: skip
    return orjson.dumps({"inputs": tensors})
