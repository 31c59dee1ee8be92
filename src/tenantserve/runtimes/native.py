"""Native artifacts (``xgboost.json``, ``sklearn.skops`` …) served as the ONNX made from them.

The first load converts the file (:mod:`tenantserve.convert`, which proves the result) into
the disk tier, keyed by the file's digest, its sample's, and the converter's library versions;
later loads, and other models with the same file, take the kept ``model.onnx``, which then
loads like any ONNX model (its ORT-format file made once too). A conversion that fails raises
``LoadFailed``; the cache remembers the failure like any other failed load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from tenantserve.convert.proof import SAMPLE_CSV, SAMPLE_NPY
from tenantserve.convert.registry import ONNX_FILE, REPORT_FILE, converter_for, framework_for
from tenantserve.errors import LoadFailed
from tenantserve.runtimes.ort_format import DerivedFiles
from tenantserve.types import ModelManifest

_REMEMBERED = 100_000


class NativeArtifacts:
    """Where converted models are kept: ``files`` (the disk tier), else a private folder."""

    def __init__(self, files: DerivedFiles | None) -> None:
        self._files: DerivedFiles = files if files is not None else _ScratchFiles()
        # By file identity: a load hashes an unchanged file once, not on every load.
        self._digests: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, path: Path, manifest: ModelManifest) -> tuple[Path, ModelManifest]:
        """The folder and manifest to load: the converted ONNX for a native file, else as given.

        Raises:
            MissingExtra: the framework's extra is not installed.
            LoadFailed: the file cannot be converted, or the result predicts otherwise.
        """
        framework = framework_for(manifest.model_file)
        if framework is None:
            return path, manifest
        converter = converter_for(framework)  # MissingExtra before any reading or hashing
        source = path / manifest.model_file
        parts = [self._digest(source), converter.versions, ONNX_FILE]
        parts += [self._digest(path / name) for name in (SAMPLE_NPY, SAMPLE_CSV)]
        key = "native-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]

        def build(work: Path) -> None:
            # Imports onnx, which only the converters' extras bring.
            from tenantserve.convert.run import convert_artifact

            conversion = convert_artifact(path, manifest.model_file)
            (work / ONNX_FILE).write_bytes(conversion.onnx)
            (work / REPORT_FILE).write_text(json.dumps(conversion.report(), indent=1))

        entry, _built = self._files.get_or_create(key, build)
        # The manifest's digest and published ORT copy are of the native file, not this one.
        converted = dataclasses.replace(
            manifest, model_file=ONNX_FILE, sha256=None, ort_format=None
        )
        return entry.path, converted

    def _digest(self, path: Path) -> str:
        try:
            st = path.stat()
        except FileNotFoundError:
            return "-"
        except OSError as exc:
            raise LoadFailed(f"{path.name} could not be read ({type(exc).__name__})") from exc
        identity = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._digests.get(identity)
        if known is not None:
            return known
        try:
            with path.open("rb") as file:
                digest = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            raise LoadFailed(f"{path.name} could not be read ({type(exc).__name__})") from exc
        with self._lock:
            self._digests[identity] = digest
            if len(self._digests) > _REMEMBERED:
                self._digests.popitem(last=False)
        return digest


@dataclasses.dataclass(frozen=True, slots=True)
class _Made:
    path: Path


class _ScratchFiles:
    """Derived files in a folder of this process's own, for runtimes made without a disk tier."""

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="tenantserve-converted-"))
        self._lock = threading.Lock()

    def get_or_create(self, key: str, build: Callable[[Path], None]) -> tuple[_Made, bool]:
        folder = self._root / key
        with self._lock:
            if folder.is_dir():
                return _Made(folder), False
            work = Path(tempfile.mkdtemp(dir=self._root))
            build(work)
            work.rename(folder)
        return _Made(folder), True
