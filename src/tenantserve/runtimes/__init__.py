"""Runtimes: name → factory table; ``runtime_for(manifest)`` picks the one an artifact names."""

from __future__ import annotations

from tenantserve.errors import LoadFailed
from tenantserve.runtimes.base import LoadedModel, Runtime
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.types import ModelManifest

__all__ = ["LoadedModel", "Runtime", "default_runtimes", "runtime_for"]


def default_runtimes() -> dict[str, Runtime]:
    """The runtimes enabled without any opt-in: those that load artifacts as data only."""
    return {"onnx": OnnxRuntime()}


def runtime_for(runtimes: dict[str, Runtime], manifest: ModelManifest) -> Runtime:
    try:
        return runtimes[manifest.runtime]
    except KeyError:
        known = ", ".join(sorted(runtimes))
        raise LoadFailed(
            f"runtime {manifest.runtime!r} is not enabled on this server (enabled: {known})"
        ) from None
