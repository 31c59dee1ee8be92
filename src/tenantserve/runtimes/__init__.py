"""Runtimes: name → factory table; ``runtime_for(manifest)`` picks the one an artifact names."""

from __future__ import annotations

import contextlib
from pathlib import Path

from tenantserve.errors import LoadFailed
from tenantserve.runtimes.base import LoadedModel, Prepared, Runtime, SharedUsage
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.runtimes.ort_format import DerivedFiles, FastLoads
from tenantserve.runtimes.shared import file_digest
from tenantserve.runtimes.text import SharedTokenizers, with_tokenizer
from tenantserve.runtimes.topk import with_top_k
from tenantserve.types import ModelManifest

__all__ = [
    "DeclaredSteps",
    "DerivedFiles",
    "LoadedModel",
    "Prepared",
    "Runtime",
    "SharedUsage",
    "default_runtimes",
    "runtime_for",
    "wrap",
]


def default_runtimes(
    derived: DerivedFiles | None = None, *, prepack: bool = False
) -> dict[str, Runtime]:
    """The runtimes enabled without any opt-in: those that load artifacts as data only.

    With ``derived`` (the disk tier), ONNX models load from ORT-format files made there once;
    ``prepack``: see :class:`OnnxRuntime`.
    """
    fast_loads = FastLoads(derived) if derived is not None else None
    # One tokenizer pool for all, so models on the same tokenizer.json share one parse.
    return {"onnx": DeclaredSteps(OnnxRuntime(fast_loads, prepack=prepack), SharedTokenizers())}


def runtime_for(runtimes: dict[str, Runtime], manifest: ModelManifest) -> Runtime:
    """The runtime ``manifest`` names (those of :func:`default_runtimes` apply its steps)."""
    try:
        return runtimes[manifest.runtime]
    except KeyError:
        known = ", ".join(sorted(runtimes))
        raise LoadFailed(
            f"runtime {manifest.runtime!r} is not enabled on this server (enabled: {known})"
        ) from None


class DeclaredSteps:
    """A runtime whose models come wrapped in their manifest's pre- and post-processing."""

    def __init__(self, runtime: Runtime, tokenizers: SharedTokenizers) -> None:
        self._runtime = runtime
        self._tokenizers = tokenizers
        self.name = runtime.name

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        return self._runtime.prepare(path, manifest)

    def load(self, path: Path, manifest: ModelManifest) -> LoadedModel:
        return wrap(self._runtime.load(path, manifest), manifest, path, self._tokenizers)

    def warm_up(self) -> None:
        self._runtime.warm_up()

    def shared_usage(self) -> SharedUsage:
        inner, tokenizers = self._runtime.shared_usage(), self._tokenizers.usage()
        return SharedUsage(
            held_bytes=inner.held_bytes + tokenizers.held_bytes,
            logical_bytes=inner.logical_bytes + tokenizers.logical_bytes,
        )

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        estimate = self._runtime.shared_estimate(manifest, artifact_path)
        step = manifest.preprocess
        if step is not None:
            path = artifact_path / step.tokenizer_file
            with contextlib.suppress(OSError):
                if not self._tokenizers.holds(f"{file_digest(path)}:{step.max_length}"):
                    # A parsed all-MiniLM tokenizer.json (466 kB) was seen to hold ~6 MB.
                    estimate += 16 * path.stat().st_size
        return estimate


def wrap(
    model: LoadedModel,
    manifest: ModelManifest,
    path: Path,
    tokenizers: SharedTokenizers | None = None,
) -> LoadedModel:
    """``model`` with text → tokens before it and scores → top-k labels after it, as declared.

    Raises:
        LoadFailed: a declared step does not fit the model; ``model`` is closed first.
    """
    try:
        if manifest.preprocess is not None:
            pool = tokenizers if tokenizers is not None else SharedTokenizers()
            model = with_tokenizer(model, path, manifest.preprocess, pool)
        if manifest.postprocess is not None:
            model = with_top_k(model, manifest.labels or (), manifest.postprocess)
    except BaseException:
        model.close()
        raise
    return model
