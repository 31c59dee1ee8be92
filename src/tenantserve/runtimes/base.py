"""The runtime seam: ``load(path, manifest) -> LoadedModel`` and the ``LoadedModel`` contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tenantserve.types import ModelManifest, Tensors, TensorSpec


@dataclass(frozen=True, slots=True)
class SharedUsage:
    """Shared parts' bytes: ``held`` once each; ``logical`` = held times models using them."""

    held_bytes: int = 0
    logical_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a runtime can tell of an artifact before loading it (see ``Runtime.prepare``).

    Attributes:
        mapped_bytes: the model file its session maps and keeps whole (the weights live in
            it), so the model holds this plus a session's own structures, which are alike for
            models of one ``shape``; ``None`` when the runtime cannot say (measure the load).
        shape: models of one shape hold the same bytes beside their mapped file.
        note: how the model loads when not the fast way, and why ("" when it does).
        held_bytes: what the model will hold, when the runtime knows it without measuring
            (plain arrays, not a session): the size, with no measurement and no lock alone.
    """

    mapped_bytes: int | None = None
    shape: str = ""
    note: str = ""
    held_bytes: int | None = None


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

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        """Make the artifact quick to load where the runtime can (once per file: the result is
        kept), and say what loading it will hold. Runs on a load thread, before ``load``."""
        ...

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel: ...

    def warm_up(self) -> None:
        """Pay the runtime's one-time set-up now, so the first model is not charged for it."""
        ...

    def shared_usage(self) -> SharedUsage:
        """Bytes held by parts shared between models (counted once, not per model)."""
        ...

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        """Bytes loading this model would add in shared parts not held yet (0 if none)."""
        ...
