"""LocalFetches: a local store's models as last checked, kept while nothing about them moved.

A local store serves each model in place, and checking one on every load — every path
component resolved for links, ``model.json`` read and parsed, the folder walked for its size,
the model file's identity looked up for its digest — took ~1.4 ms of Python per load at a
quarter budget, with the GIL held and loads waiting for it (benchmarks/RESULTS.md). Kept
instead: what the last full check found, and the identity of everything it depended on —
each component of the model's path (not followed, so a link put in its place shows), the
folder (an entry added, removed or replaced changes its mtime) and each file the manifest
names (a file changed in place changes its own). A few ``lstat`` calls say whether the check
still stands; anything else means a full check again. Nothing changed in the last
``SETTLE_S`` is kept: file times are coarse (a few ms), and a file rewritten at once at the
same size could otherwise keep its identity.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from tenantserve.store.base import LocalArtifact
from tenantserve.store.manifest import MANIFEST_NAME
from tenantserve.types import ModelId, ModelManifest

SETTLE_S = 2.0


class _Identity(NamedTuple):
    device: int
    inode: int
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int


_ABSENT = _Identity(0, 0, 0, 0, 0, 0)  # no model.json, no fast-load file yet


class LocalFetches:
    """``get(model_id)``: the artifact last checked, while nothing it depends on moved;
    ``put(artifact)``: remember one just checked in full (``root/<model id>`` itself)."""

    def __init__(self, root: Path, max_entries: int = 100_000) -> None:
        self._root = root
        self._max_entries = max_entries
        self._kept: OrderedDict[ModelId, tuple[tuple[_Identity, ...], LocalArtifact]]
        self._kept = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_id: ModelId) -> LocalArtifact | None:
        with self._lock:
            kept = self._kept.get(model_id)
        if kept is None:
            return None
        identities, artifact = kept
        if self._identities(model_id, artifact.manifest) != identities:
            with self._lock:
                self._kept.pop(model_id, None)
            return None
        return artifact

    def put(self, artifact: LocalArtifact) -> None:
        model_id = artifact.model_id
        if artifact.path != self._root / model_id.value:
            return  # found elsewhere (SageMaker's unpacked layout): checked in full each time
        identities = self._identities(model_id, artifact.manifest)
        settled_ns = time.time_ns() - int(SETTLE_S * 1e9)
        if identities is None or any(i.ctime_ns > settled_ns for i in identities):
            return  # unreadable, or changed a moment ago: checked in full again next time
        with self._lock:
            self._kept[model_id] = (identities, artifact)
            self._kept.move_to_end(model_id)
            if len(self._kept) > self._max_entries:
                self._kept.popitem(last=False)

    def _identities(
        self, model_id: ModelId, manifest: ModelManifest
    ) -> tuple[_Identity, ...] | None:
        path = self._root
        names: list[Path] = []
        for segment in model_id.value.split("/"):
            path = path / segment
            names.append(path)
        folder = path
        names.append(folder / MANIFEST_NAME)
        for name in _named_files(manifest):
            names.append(folder / name)
        try:
            return tuple(_identity(name) for name in names)
        except OSError:
            return None  # unreadable: check in full (and say why)


def _named_files(manifest: ModelManifest) -> list[str]:
    named = [manifest.model_file]
    if manifest.preprocess is not None:
        named.append(manifest.preprocess.tokenizer_file)
    if manifest.base is not None:
        named.append(manifest.base.model_file)
    if manifest.ort_format is not None:
        named.append(manifest.ort_format.model_file)
    return named


def _identity(path: Path) -> _Identity:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _ABSENT
    return _Identity(st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
