"""Request traces: which model is called when, generated from a seed or read from a file.

A :class:`Trace` is an ordered tuple of :class:`TraceRequest` ``(t_s, model_id)``. Make one
with :func:`generate` (the kinds are in :mod:`tenantserve.tools.bench.trace_kinds`: ``zipf``,
``uniform``, ``shifting``, ``bursts``, ``diurnal``, ``flood``), or read one with
:func:`load_trace`. The load generator, the offline cache replay and the capacity planner all
read the same traces.
"""

from __future__ import annotations

import csv
import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

KINDS = ("zipf", "uniform", "shifting", "bursts", "diurnal", "flood")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: ``t_s`` seconds after the trace starts, to ``model_id``."""

    t_s: float
    model_id: str


@dataclass(frozen=True)
class Trace:
    """Requests in time order, and a one-line description of how they were made."""

    requests: tuple[TraceRequest, ...]
    description: str = ""

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    def __getitem__(self, index: int) -> TraceRequest:
        return self.requests[index]

    @property
    def duration_s(self) -> float:
        """Time of the last request (0 for an empty trace)."""
        return self.requests[-1].t_s if self.requests else 0.0

    def model_ids(self) -> list[str]:
        """Distinct model ids, in order of first request."""
        return list(dict.fromkeys(r.model_id for r in self.requests))

    def counts(self) -> Counter[str]:
        """Requests per model id."""
        return Counter(r.model_id for r in self.requests)

    def between(self, start_s: float, end_s: float) -> Trace:
        """The requests in ``[start_s, end_s)``, their times shifted to start at 0."""
        return Trace(
            tuple(TraceRequest(r.t_s - start_s, r.model_id) for r in self.requests
                  if start_s <= r.t_s < end_s),
            f"{self.description} [{start_s:g}-{end_s:g} s]",
        )  # fmt: skip


def tenant_of(model_id: str) -> str:
    """The tenant of a model id: its first path segment."""
    return model_id.split("/", 1)[0]


def generate(
    kind: str,
    model_ids: Sequence[str],
    *,
    rate: float,
    duration_s: float,
    seed: int,
    **params: Any,
) -> Trace:
    """Make a trace of ``kind`` (one of :data:`KINDS`); ``params`` go to that kind's function."""
    # Imported here: the kinds build Trace objects, so they import this module.
    from tenantserve.tools.bench import trace_kinds

    makers: dict[str, Callable[..., Trace]] = {
        "zipf": trace_kinds.zipf,
        "uniform": trace_kinds.uniform,
        "shifting": trace_kinds.shifting,
        "bursts": trace_kinds.bursts,
        "diurnal": trace_kinds.diurnal,
        "flood": trace_kinds.flood,
    }
    if kind not in makers:
        raise ValueError(f"unknown trace kind {kind!r}; expected one of {', '.join(KINDS)}")
    maker = makers[kind]
    try:
        inspect.signature(maker).bind(
            model_ids, rate=rate, duration_s=duration_s, seed=seed, **params
        )
    except TypeError as exc:
        raise ValueError(f"bad parameters for a {kind} trace: {exc}") from None
    return maker(model_ids, rate=rate, duration_s=duration_s, seed=seed, **params)


def save_trace(path: Path, trace: Trace) -> None:
    """Write ``trace`` as CSV (``t_s,model_id`` header) if ``path`` ends in .csv, else JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t_s", "model_id"])
            writer.writerows((repr(r.t_s), r.model_id) for r in trace)
        return
    with path.open("wb") as handle:
        for r in trace:
            handle.write(orjson.dumps({"t_s": r.t_s, "model_id": r.model_id}) + b"\n")


def load_trace(path: Path) -> Trace:
    """Read a trace written by :func:`save_trace` (or by hand); requests are sorted by time."""
    rows: list[tuple[object, object]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"t_s", "model_id"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: a CSV trace needs a 't_s,model_id' header")
            rows = [(row["t_s"], row["model_id"]) for row in reader]
    else:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    doc = orjson.loads(line)
                    if not isinstance(doc, dict):
                        raise ValueError(f"{path}:{number}: expected a JSON object")
                    rows.append((doc.get("t_s"), doc.get("model_id")))
    requests = [_checked(path, t, model) for t, model in rows]
    requests.sort(key=lambda r: r.t_s)
    return Trace(tuple(requests), f"file {path.name}")


def _checked(path: Path, t: object, model_id: object) -> TraceRequest:
    try:
        t_s = float(t)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: bad t_s {t!r}") from None
    if not math.isfinite(t_s) or t_s < 0:
        raise ValueError(f"{path}: t_s must be a finite time >= 0, got {t!r}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"{path}: bad model_id {model_id!r}")
    return TraceRequest(t_s, model_id)
