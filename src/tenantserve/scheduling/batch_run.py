"""What a batch does on its compute thread: one model call for every request, split back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tenantserve.runtimes import LoadedModel
from tenantserve.runtimes.grouped import Grouped
from tenantserve.types import Tensors

Outcome = Tensors | BaseException


@dataclass(frozen=True, slots=True)
class Request:
    """One request's part of a batch: its model (a tenant's own) and its rows."""

    model: LoadedModel
    tensors: Tensors
    rows: int


def compute(requests: Sequence[Request]) -> list[Outcome]:
    """Each request's outputs from one call: rows stacked into one ``predict`` when all are of
    one model, or one ``predict_group`` (the shared base once, each head on its rows) when of
    several. If that call fails, each request runs alone, so a failure is its own request's."""
    if not requests:
        return []  # every caller left: the model is not touched
    if len(requests) == 1:
        return [_alone(requests[0])]
    # Requests of one model sit together, so its head runs once on all of them.
    order = _by_model(requests)
    ordered = [requests[i] for i in order]
    names = ordered[0].tensors.keys()
    stacked = {n: np.concatenate([r.tensors[n] for r in ordered]) for n in names}
    try:
        outputs = _run(ordered, stacked)
    except Exception:
        return [_alone(r) for r in requests]
    answers: list[Outcome] = [{}] * len(requests)
    for index, output in zip(order, outputs, strict=True):
        answers[index] = output
    return answers


def _run(ordered: list[Request], stacked: Tensors) -> list[Tensors]:
    parts: list[tuple[LoadedModel, int]] = []
    for request in ordered:
        if parts and parts[-1][0] is request.model:
            parts[-1] = (request.model, parts[-1][1] + request.rows)
        else:
            parts.append((request.model, request.rows))
    if len(parts) == 1:
        results = [parts[0][0].predict(stacked)]
    else:
        first = parts[0][0]
        if not isinstance(first, Grouped):
            raise TypeError("requests of several models without a shared base were batched")
        results = first.predict_group(stacked, parts)
    outputs: list[Tensors] = []
    requests = iter(ordered)
    for (_, rows), result in zip(parts, results, strict=True):
        if any(a.ndim == 0 or a.shape[0] != rows for a in result.values()):
            raise ValueError("an output without a row per input row")
        start = 0
        while start < rows:
            request = next(requests)
            outputs.append({n: a[start : start + request.rows] for n, a in result.items()})
            start += request.rows
    return outputs


def _by_model(requests: Sequence[Request]) -> list[int]:
    """Request indexes, those of one model together, models in order of first arrival."""
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(id(request.model), []).append(index)
    return [index for indexes in groups.values() for index in indexes]


def _alone(request: Request) -> Outcome:
    try:
        return request.model.predict(request.tensors)
    except Exception as exc:
        return exc
