"""The runtime seam: ``load(path, manifest) -> LoadedModel`` and the ``LoadedModel`` contract."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tenantserve.types import ModelManifest, Tensors, TensorSpec


class LoadedModel(Protocol):
    """A model held in memory, ready to predict. Thread-safe ``predict``; ``close`` once."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def platform(self) -> str:
        """The runtime's name as shown in metadata, e.g. ``onnxruntime_onnx``."""
        ...

    def predict(self, tensors: Tensors) -> Tensors:
        """Run the model; raises ``InvalidInput`` for mismatched tensors, ``PredictFailed`` else."""
        ...

    def close(self) -> None:
        """Release what the model holds; the cache calls it once, after its last lease."""
        ...


class Runtime(Protocol):
    """Turns an artifact folder into a :class:`LoadedModel`; raises ``LoadFailed`` on bad files."""

    name: str

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel: ...

    def warm_up(self) -> None:
        """Pay the runtime's one-time set-up now, so the first model is not charged for it."""
        ...
