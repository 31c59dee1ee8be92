"""What a replay puts in place of the server's surroundings: a store that only knows sizes,
a runtime that loads nothing, and an executor that runs work at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import ParamSpec, TypeVar

from tenantserve.runtimes import Prepared, SharedUsage
from tenantserve.runtimes.base import LoadedModel
from tenantserve.store.base import LocalArtifact
from tenantserve.store.versions import ModelVersions
from tenantserve.types import ModelId, ModelManifest, Tensors, TensorSpec

P = ParamSpec("P")
T = TypeVar("T")


class Inline(Executor):
    """Runs work at once on the calling thread: a replay has nothing to overlap."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class SimModel:
    platform = "simulated"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def predict(self, tensors: Tensors) -> Tensors:
        return tensors

    def close(self) -> None:
        return None


class SimRuntime:
    name = "onnx"

    def warm_up(self) -> None:
        return None

    def shared_usage(self) -> SharedUsage:
        return SharedUsage()

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        return 0

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        return Prepared()

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        return SimModel()


class SimStore:
    """Every model of the fleet, by size; nothing is read from disk."""

    url = "simulated://"

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self._sizes = sizes

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        size = self._sizes[model_id.value]
        return LocalArtifact(model_id, Path("."), ModelManifest(memory_hint_bytes=size), size)

    def versions(self, model_id: ModelId) -> ModelVersions | None:
        return None  # no versioned models

    def list(self, prefix: str = "") -> list[str]:
        return sorted(m for m in self._sizes if m.startswith(prefix))

    def check(self) -> None:
        return None
