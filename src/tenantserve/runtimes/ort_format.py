"""ORT-format files: made once from an ONNX file, kept in the disk tier, loaded by mapping them.

A session made from an ORT-format file mapped into memory (``use_memory_mapped_ort_model``)
with its initializers left in that mapping (``use_ort_model_bytes_for_initializers``) and
pre-packing off parses nothing and copies no weight: a 10.56 MB model loads in about 0.3 ms
instead of 25 ms from its ``.onnx``, and holds its file plus a few kB (measured in
benchmarks/bench_loads.py). Loading from Python ``bytes`` instead is unsafe: the binding copies
them into a temporary, so ``use_ort_model_bytes_directly`` leaves the session reading freed
memory (predictions were off by up to 0.74 with ONNX Runtime 1.31.1).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import onnxruntime as ort

from tenantserve.runtimes.arena import use_shared_arena
from tenantserve.runtimes.file_digests import FileDigests
from tenantserve.types import OrtFormat

log = logging.getLogger(__name__)

ORT_VERSION: str = ort.__version__
ORT_FILE = "model.ort"
# Saved at level 3 (layout) or 99 (all), ONNX Runtime warns that the graph "may contain
# hardware specific optimizations, and should only be used in the same environment the model
# was optimized in" (NCHWc layouts); the disk tier may move between machines, so files are
# saved at the extended level, whose fusions run anywhere, and loaded without more of them.
SAVED_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
_REMEMBERED = 100_000

K = TypeVar("K")


class NoFastLoad(Exception):
    """An ONNX file has no ORT-format file; ``str()`` says why (it then loads from ONNX)."""


class _Entry(Protocol):
    @property
    def path(self) -> Path: ...


class DerivedFiles(Protocol):
    """Where files made from artifacts are kept: the bounded disk tier (``DiskCache``)."""

    def get_or_create(self, key: str, build: Callable[[Path], None]) -> tuple[_Entry, bool]: ...


def session_options(*, prepack: bool, ort_file: bool = False) -> ort.SessionOptions:
    """One intra-op and one inter-op thread whatever the number of models; an ORT-format file
    mapped, its weights used in place; weights pre-packed (a packed copy made at load, for
    faster matrix products) only when ``prepack``."""
    options = ort.SessionOptions()
    # The server's own executor provides the parallelism; a session adds no threads.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    use_shared_arena(options)  # a run's tensors come from the one arena, not the session's
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if ort_file:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.load_model_format", "ORT")
        options.add_session_config_entry("session.use_memory_mapped_ort_model", "1")
        options.add_session_config_entry("session.use_ort_model_bytes_for_initializers", "1")
    return options


def convert(model: bytes, target: Path) -> None:
    """Write ``model`` (ONNX bytes) to ``target`` optimized, in ORT format.

    Raises:
        NoFastLoad: ONNX Runtime cannot convert it (custom ops, external data, a bad file).
    """
    options = session_options(prepack=False)
    options.graph_optimization_level = SAVED_LEVEL
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.save_model_format", "ORT")
    try:
        ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise NoFastLoad(f"ONNX Runtime cannot convert it: {first_line(exc)}") from exc
    if not target.is_file():
        raise NoFastLoad("ONNX Runtime wrote no ORT-format file")
    check_loads(target)


def check_loads(ort_file: Path) -> None:
    """Raise :class:`NoFastLoad` unless ``ort_file`` opens as the server opens it: ONNX Runtime
    writes files it cannot read back (a graph of hundreds of thousands of nodes fails its
    flatbuffer verifier), and a mapped session is cheap beside a conversion."""
    try:
        ort.InferenceSession(
            str(ort_file),
            sess_options=session_options(prepack=False, ort_file=True),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        reason = first_line(exc).replace(str(ort_file), ort_file.name)  # no host paths shown
        raise NoFastLoad(f"its ORT-format file does not load: {reason}") from exc


class FastLoads:
    """ORT-format files for ONNX files, made once and kept in ``files`` (the disk tier).

    A file made here is keyed by the digest of the ONNX bytes it was made from and by this
    ONNX Runtime's version, so a new version makes new ones; a published copy
    (:class:`OrtFormat` of the same version) is taken instead, keyed by its own digest. A file
    that cannot be converted is remembered and said once in the log; it loads from ONNX.
    Thread-safe.
    """

    def __init__(self, files: DerivedFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._file_digests = FileDigests()
        self._failed: OrderedDict[str, str] = OrderedDict()  # by ONNX digest: why not
        self._said: OrderedDict[str, str] = OrderedDict()

    def ort_file(
        self, folder: Path, model_file: str, *, sha256: str | None, published: OrtFormat | None
    ) -> Path:
        """The ORT-format file for ``folder / model_file`` (made now if it was never made).

        ``sha256``, when given, is the ONNX file's digest as its manifest declares it (made
        files are keyed by it, and the bytes converted must match it).

        Raises:
            NoFastLoad: there is none; the model loads from its ONNX file.
        """
        source = folder / model_file
        if published is not None and published.onnxruntime == ORT_VERSION:
            try:
                return self._published(folder, published)
            except NoFastLoad as exc:
                self._say_once(
                    published.sha256,
                    f"published ORT-format file {published.model_file} not taken: {exc}; "
                    f"converting {model_file}",
                )
        digest = sha256 or self._digest_of(source)
        with self._lock:
            failed = self._failed.get(digest)
        if failed is not None:
            raise NoFastLoad(failed)
        key = _key("ort", digest, ORT_VERSION)

        def build(work: Path) -> None:
            try:
                data = source.read_bytes()
            except OSError as exc:
                raise NoFastLoad(f"{model_file} could not be read ({type(exc).__name__})") from exc
            if hashlib.sha256(data).hexdigest() != digest:
                raise NoFastLoad(f"{model_file} does not match its sha256")
            convert(data, work / ORT_FILE)

        try:
            entry, _built = self._files.get_or_create(key, build)
        except NoFastLoad as exc:
            with self._lock:
                _bounded_put(self._failed, digest, str(exc))
            self._say_once(
                digest, f"no ORT-format file for {model_file}: {exc}; it loads from ONNX"
            )
            raise
        except Exception as exc:  # the disk tier full or failing: load from ONNX meanwhile
            raise NoFastLoad(_disk_trouble(exc)) from exc
        return entry.path / ORT_FILE

    def _published(self, folder: Path, published: OrtFormat) -> Path:
        def build(work: Path) -> None:
            # A copy, never the store's file: a mapped file truncated in place (a `cp` over
            # it) would crash the process on its next read of a lost page.
            try:
                data = (folder / published.model_file).read_bytes()
            except OSError as exc:
                raise NoFastLoad(f"could not be read ({type(exc).__name__})") from exc
            if hashlib.sha256(data).hexdigest() != published.sha256:
                raise NoFastLoad("does not match its sha256")
            (work / ORT_FILE).write_bytes(data)
            check_loads(work / ORT_FILE)

        try:
            entry, _built = self._files.get_or_create(_key("pub", published.sha256), build)
        except NoFastLoad:
            raise
        except Exception as exc:
            raise NoFastLoad(_disk_trouble(exc)) from exc
        return entry.path / ORT_FILE

    def _digest_of(self, source: Path) -> str:
        try:
            return self._file_digests.of(source)
        except OSError as exc:
            raise NoFastLoad(f"{source.name} could not be read ({type(exc).__name__})") from exc

    def _say_once(self, key: str, message: str) -> None:
        with self._lock:
            said = key in self._said
            _bounded_put(self._said, key, "")
        if not said:
            log.warning(message)


def _key(*parts: str) -> str:
    return f"ort-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:40]}"


# "[ONNXRuntimeError] : 1 : FAIL : " and "/onnxruntime_src/<file>:<line> <C++ signature> ":
# build paths and noise that would push the reason itself past the cut below.
_ORT_NOISE = re.compile(
    r"^\[ONNXRuntimeError\] : \d+ : \w+ : |/\S+\.(?:h|cc|cpp|c):\d+ .*?[)>] (?=[A-Z])"
)


def first_line(exc: BaseException) -> str:
    """The reason in an ONNX Runtime error, without its code and source-file noise."""
    text = _ORT_NOISE.sub("", str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _disk_trouble(exc: Exception) -> str:
    # An OSError's text names host paths; a TenantServeError's is safe to show.
    reason = type(exc).__name__ if isinstance(exc, OSError) else str(exc)
    return f"the disk cache could not keep it ({reason})"


def _bounded_put(table: OrderedDict[K, str], key: K, value: str) -> None:
    table[key] = value
    table.move_to_end(key)
    if len(table) > _REMEMBERED:
        table.popitem(last=False)
