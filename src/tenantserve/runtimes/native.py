"""Native artifacts (``xgboost.json``, ``sklearn.skops`` …) served as the ONNX made from them.

The first load converts the file (:mod:`tenantserve.convert`, which proves the result) in a
child process, so that no framework is ever imported into the server, into the disk tier,
keyed by the file's digest, its sample's, and the converter's library versions; later loads,
and other models with the same file, take the kept ``model.onnx``, which then loads like any
ONNX model (its ORT-format file made once too). A conversion that fails raises ``LoadFailed``
(``MissingExtra`` without the framework); the cache remembers it like any failed load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from tenantserve.convert.proof import SAMPLE_CSV, SAMPLE_NPY
from tenantserve.convert.registry import ONNX_FILE, framework_for, installed_versions
from tenantserve.errors import LoadFailed, MissingExtra
from tenantserve.runtimes.file_digests import FileDigests
from tenantserve.runtimes.ort_format import DerivedFiles
from tenantserve.types import ModelManifest

log = logging.getLogger(__name__)


class NativeArtifacts:
    """Where converted models are kept: ``files`` (the disk tier), else a private folder."""

    def __init__(self, files: DerivedFiles | None, *, timeout_s: float = 600.0) -> None:
        self._files: DerivedFiles = files if files is not None else _ScratchFiles()
        self._timeout_s = timeout_s
        # By file identity: a load hashes an unchanged file once, not on every load.
        self._digests = FileDigests()
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}  # by framework, once found installed

    def resolve(self, path: Path, manifest: ModelManifest) -> tuple[Path, ModelManifest]:
        """The folder and manifest to load: the converted ONNX for a native file, else as given.

        Raises:
            MissingExtra: the framework's extra is not installed.
            LoadFailed: the file cannot be converted, or the result predicts otherwise.
        """
        framework = framework_for(manifest.model_file)
        if framework is None:
            return path, manifest
        versions = self._versions.get(framework.name)
        if versions is None:  # MissingExtra before reading or hashing anything
            versions = self._versions.setdefault(framework.name, installed_versions(framework))
        source = path / manifest.model_file
        parts = [self._digest(source), versions, ONNX_FILE]
        parts += [self._digest(path / name) for name in (SAMPLE_NPY, SAMPLE_CSV)]
        key = "native-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]

        def build(work: Path) -> None:
            _convert_in_child(path, manifest.model_file, work, self._timeout_s)

        entry, _built = self._files.get_or_create(key, build)
        # The manifest's digest and published ORT copy are of the native file, not this one.
        converted = dataclasses.replace(
            manifest, model_file=ONNX_FILE, sha256=None, ort_format=None
        )
        return entry.path, converted

    def _digest(self, path: Path) -> str:
        try:
            return self._digests.of(path)
        except FileNotFoundError:
            return "-"
        except OSError as exc:
            raise LoadFailed(f"{path.name} could not be read ({type(exc).__name__})") from exc


def _convert_in_child(folder: Path, model_file: str, out: Path, timeout_s: float) -> None:
    """Run :mod:`tenantserve.convert.child`: the framework is imported there, never here."""
    command = [sys.executable, "-m", "tenantserve.convert.child", str(folder), model_file, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run(
            command, capture_output=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise LoadFailed(f"converting {model_file} took more than {timeout_s:g} s") from None
    if done.returncode == 0:
        return
    try:
        answer = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        message, missing = str(answer["error"]), bool(answer["missing_extra"])
    except (ValueError, IndexError, KeyError, TypeError):
        # A crash, not a refusal: its stderr names host paths, so only the log shows it.
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        log.warning("converting %s failed (exit %s): %s", model_file, done.returncode, tail)
        raise LoadFailed(
            f"converting {model_file} failed (the converter exited with {done.returncode})"
        ) from None
    raise MissingExtra(message) if missing else LoadFailed(message)


@dataclasses.dataclass(frozen=True, slots=True)
class _Made:
    path: Path


class _ScratchFiles:
    """Derived files in a folder of this process's own, for runtimes made without a disk tier.

    The folder is made on the first conversion (most servers never convert) and removed when
    its owner is collected or the process exits, so that no run leaves it behind.
    """

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def _root(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="tenantserve-converted-"))
            weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        return self._folder

    def get_or_create(self, key: str, build: Callable[[Path], None]) -> tuple[_Made, bool]:
        with self._lock:
            root = self._root()
            folder = root / key
            if folder.is_dir():
                return _Made(folder), False
            work = Path(tempfile.mkdtemp(dir=root))
            build(work)
            work.rename(folder)
        return _Made(folder), True
