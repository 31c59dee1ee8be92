"""The store seam: ``fetch`` an artifact to a local folder, ``list`` what a prefix holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tenantserve.store.versions import ModelVersions
from tenantserve.types import ModelId, ModelManifest


@dataclass(frozen=True, slots=True)
class LocalArtifact:
    """An artifact ready on local disk: the folder, its manifest, the bytes it takes on disk."""

    model_id: ModelId
    path: Path
    manifest: ModelManifest
    nbytes: int
    download_seconds: float = 0.0


class ModelStore(Protocol):
    """Where artifacts live. Blocking calls: the cache runs them on its executor."""

    @property
    def url(self) -> str: ...

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        """Make the artifact available locally.

        Raises:
            ModelNotFound: nothing under that id.
            StoreUnavailable: the store did not answer.
            LoadFailed: the artifact is malformed (bad archive, bad manifest, checksum).
            Forbidden: a local artifact links out of its folder or its tenant's.
        """
        ...

    def versions(self, model_id: ModelId) -> ModelVersions | None:
        """The numbered versions and aliases of a versioned model (``acme/macros/1/``,
        ``acme/macros/2/``, ``aliases.json``); ``None`` for one that is not versioned or not
        there.

        Raises:
            StoreUnavailable: the store did not answer.
            LoadFailed: its ``aliases.json`` is not valid.
            Forbidden: a local model folder links out of its tenant's.
        """
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Model ids under ``prefix`` (a tenant or ``""`` for all), sorted."""
        ...

    def check(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot be used (start-up, readiness).

        The error's ``operator_hint`` names the store's URL and, for S3, the endpoint tried
        and the setting that fixes the problem; its message, like every error's, is safe for
        callers.
        """
        ...
