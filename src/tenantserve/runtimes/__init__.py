"""Runtimes: name → factory table; ``runtime_for(manifest)`` picks the one an artifact names."""

from __future__ import annotations

from pathlib import Path

from tenantserve.errors import LoadFailed
from tenantserve.runtimes.base import LoadedModel, Runtime
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.runtimes.text import with_tokenizer
from tenantserve.runtimes.topk import with_top_k
from tenantserve.types import ModelManifest

__all__ = ["DeclaredSteps", "LoadedModel", "Runtime", "default_runtimes", "runtime_for", "wrap"]


def default_runtimes() -> dict[str, Runtime]:
    """The runtimes enabled without any opt-in: those that load artifacts as data only."""
    return {"onnx": OnnxRuntime()}


def runtime_for(runtimes: dict[str, Runtime], manifest: ModelManifest) -> Runtime:
    """The runtime ``manifest`` names, loading models with the steps the manifest declares."""
    try:
        runtime = runtimes[manifest.runtime]
    except KeyError:
        known = ", ".join(sorted(runtimes))
        raise LoadFailed(
            f"runtime {manifest.runtime!r} is not enabled on this server (enabled: {known})"
        ) from None
    return DeclaredSteps(runtime)


class DeclaredSteps:
    """A runtime whose models come wrapped in their manifest's pre- and post-processing."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.name = runtime.name

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        return wrap(self._runtime.load(path, manifest), manifest, path)

    def warm_up(self) -> None:
        self._runtime.warm_up()


def wrap(model: LoadedModel, manifest: ModelManifest, path: Path) -> LoadedModel:
    """``model`` with text → tokens before it and scores → top-k labels after it, as declared.

    Raises:
        LoadFailed: a declared step does not fit the model; ``model`` is closed first.
    """
    try:
        if manifest.preprocess is not None:
            model = with_tokenizer(model, path, manifest.preprocess)
        if manifest.postprocess is not None:
            model = with_top_k(model, manifest.labels or (), manifest.postprocess)
    except BaseException:
        model.close()
        raise
    return model
