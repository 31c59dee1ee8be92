"""Grouped runs: requests of different models that share a base, run as one batch.

A model may name a ``group_key``: models with equal keys (tenants' heads on one shared encoder,
behind one tokenizer) can answer a batch holding rows of each in one call, ``predict_group``,
which runs the shared part once on every row and each model's own part on its rows. Models
without a key batch only with requests of their own (rows stacked into one ``predict``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tenantserve.runtimes.base import LoadedModel
from tenantserve.types import Tensors

Parts = Sequence[tuple[LoadedModel, int]]
"""Consecutive rows of a stacked batch: each model with how many rows are its own."""


@runtime_checkable
class Grouped(Protocol):
    """A model whose batches may hold rows of other models of its ``group_key``."""

    @property
    def group_key(self) -> str | None:
        """Models with equal keys run together in ``predict_group`` (``None``: alone)."""
        ...

    def predict_group(self, tensors: Tensors, parts: Parts) -> list[Tensors]:
        """The outputs of each part's model on its rows of ``tensors`` (every part's model
        has this model's ``group_key``), in the order of ``parts``."""
        ...


def group_key(model: LoadedModel) -> str | None:
    """``model``'s group key, or ``None`` when it runs only with its own requests."""
    # Asked for every request: an isinstance check against a runtime-checkable protocol
    # walks the protocol's members each time (it showed in the warm path's profile).
    key = getattr(model, "group_key", None)
    return key if isinstance(key, str) else None
