"""ONNX Runtime: one InferenceSession per model, one intra-op and one inter-op thread each."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tenantserve.errors import LoadFailed, PredictFailed
from tenantserve.runtimes.base import Prepared, SharedUsage
from tenantserve.runtimes.dense_head import DenseHead, dense_head
from tenantserve.runtimes.feeds import conformed_feed
from tenantserve.runtimes.file_digests import FileDigests
from tenantserve.runtimes.native import NativeArtifacts
from tenantserve.runtimes.ort_format import FastLoads, NoFastLoad, first_line, session_options
from tenantserve.runtimes.run_stop import current_run_stop
from tenantserve.runtimes.shared import BaseHeadModel, SharedBlocks, measured, verified_path
from tenantserve.types import MANIFEST_NAME, ModelManifest, SharedBase, Tensors, TensorSpec

# ONNX Runtime's type strings → OIP datatype names.
_ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise LoadFailed(f"tensor {arg.name!r} has type {arg.type}, which cannot be served")
    shape = tuple(dim if isinstance(dim, int) else -1 for dim in (arg.shape or ()))
    return TensorSpec(arg.name, datatype, shape)


class OnnxModel:
    """An InferenceSession behind the LoadedModel contract."""

    platform = "onnxruntime_onnx"

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session: ort.InferenceSession | None = session
        self._inputs = tuple(_spec(arg) for arg in session.get_inputs())
        self._outputs = tuple(_spec(arg) for arg in session.get_outputs())
        self._output_names = [spec.name for spec in self._outputs]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def predict(self, tensors: Tensors) -> Tensors:
        session = self._session
        if session is None:
            raise PredictFailed("model was unloaded")
        feed = conformed_feed(self._inputs, tensors)
        # The server stops a run that passed its timeout; ONNX Runtime checks the flag between
        # nodes and fails the run, which frees this thread.
        options = ort.RunOptions()
        stop = current_run_stop()

        def terminate() -> None:
            options.terminate = True

        forget = stop.on_stop(terminate) if stop is not None else None
        try:
            values = session.run(self._output_names, feed, options)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            if stop is not None and stop.stopped:
                raise PredictFailed("the run was stopped before it finished") from exc
            raise PredictFailed(f"model failed to run: {first_line(exc)}") from exc
        finally:
            if forget is not None:
                forget()
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._session = None


# y = Identity(x): the smallest valid model, to initialise ONNX Runtime at start-up (~10 MB of
# one-time set-up that would otherwise be measured as part of the first tenant's model).
_WARM_UP_MODEL = (
    b'\x08\t\x12\x00:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01wZ\x0f\n\x01x\x12\n\n\x08'
    b"\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)


class OnnxRuntime:
    """Loads ``model.onnx`` as data (no custom ops, nothing executed).

    With ``fast_loads``, a model loads from its ORT-format file, mapped (see
    :mod:`tenantserve.runtimes.ort_format`); one that cannot be converted loads from ONNX. A
    model's own weights are pre-packed only with ``prepack``: packing costs a copy of them and
    most of a load's time, and pays off only for products over many rows. A shared base is
    loaded once and runs for every model on it, so it is always pre-packed.

    A model that declares a shared ``base`` gets the one session every such model shares
    (see :mod:`tenantserve.runtimes.shared`); its head runs as plain weight arrays where its
    graph allows (:mod:`tenantserve.runtimes.dense_head`: a session would hold ~5x its
    weights), else in a session of its own.
    """

    name = "onnx"

    def __init__(
        self,
        fast_loads: FastLoads | None = None,
        *,
        prepack: bool = False,
        native: NativeArtifacts | None = None,
    ) -> None:
        self._fast_loads = fast_loads
        self._prepack = prepack
        # Native files (xgboost.json …) load as the ONNX converted from them (docs/frameworks.md).
        self._native = native if native is not None else NativeArtifacts(None)
        self._bases: SharedBlocks[ort.InferenceSession] = SharedBlocks()
        self._digests = FileDigests()

    def shared_usage(self) -> SharedUsage:
        return self._bases.usage()

    def shared_estimate(self, manifest: ModelManifest, artifact_path: Path) -> int:
        base = manifest.base
        if base is None or self._bases.holds(base.sha256):
            return 0
        # An int8 encoder was seen to hold 4x its file once ONNX Runtime folds it to float32.
        return 4 * (artifact_path / base.model_file).stat().st_size

    def warm_up(self) -> None:
        session = ort.InferenceSession(
            _WARM_UP_MODEL,
            sess_options=session_options(prepack=self._prepack),
            providers=["CPUExecutionProvider"],
        )
        session.run(None, {"x": np.ones(1, dtype=np.float32)})

    def prepare(self, path: Path, manifest: ModelManifest) -> Prepared:
        """Make the ORT-format files (the model's, its base's) unless made before; the model
        then holds its mapped file plus a session's structures. A native file (xgboost.json
        …) is converted to ONNX first, once: the result is kept (:mod:`.native`). A head
        that runs as weight arrays needs no file made, and holds what its arrays hold."""
        path, manifest = self._native.resolve(path, manifest)
        dense_bytes = _dense_bytes(path, manifest)
        if self._fast_loads is None:
            return Prepared(held_bytes=dense_bytes)
        notes = []
        base = manifest.base
        if base is not None and not self._bases.holds(base.sha256):
            try:
                self._fast_loads.ort_file(path, base.model_file, sha256=base.sha256, published=None)
            except NoFastLoad as exc:
                notes.append(f"its base loads from {base.model_file}: {exc}")
        if dense_bytes is not None:
            return Prepared(note="; ".join(notes), held_bytes=dense_bytes)
        try:
            own = self._ort_file(path, manifest)
        except NoFastLoad as exc:
            return Prepared(note="; ".join([f"loads from {manifest.model_file}: {exc}", *notes]))
        size = own.stat().st_size
        # Sessions of models alike (sizes within 1/16 of an octave) hold alike structures.
        return Prepared(size, f"onnx:{int(math.log2(max(size, 1)) * 16)}", "; ".join(notes))

    def load(self, path: Path, manifest: ModelManifest) -> OnnxModel | BaseHeadModel:
        path, manifest = self._native.resolve(path, manifest)
        if manifest.base is None:
            return OnnxModel(self._own_session(path, manifest))
        base = manifest.base
        base_session, release = self._bases.acquire(
            base.sha256, lambda: self._base_session(path, base)
        )
        try:
            head: DenseHead | OnnxModel | None = dense_head(path / manifest.model_file)
            if head is None:
                head = OnnxModel(self._own_session(path, manifest))
        except BaseException:
            release()
            raise
        return BaseHeadModel(OnnxModel(base_session), head, release, base.sha256)

    def _ort_file(self, path: Path, manifest: ModelManifest) -> Path:
        assert self._fast_loads is not None
        return self._fast_loads.ort_file(
            path, manifest.model_file, sha256=manifest.sha256, published=manifest.ort_format
        )

    def _own_session(self, path: Path, manifest: ModelManifest) -> ort.InferenceSession:
        if self._fast_loads is not None:
            try:
                ort_file = self._ort_file(path, manifest)
            except NoFastLoad:
                pass  # said in prepare's note and the log
            else:
                return _session(ort_file, manifest.model_file, self._prepack, ort_format=True)
        return _session(self._checked_onnx(path, manifest), manifest.model_file, self._prepack)

    def _checked_onnx(self, path: Path, manifest: ModelManifest) -> Path:
        """The model's ONNX file, its digest checked here where the store left that to the
        runtime (:attr:`ModelManifest.runs_published_ort`), once per file identity: a model
        whose published file cannot serve loads from this one on every load."""
        model_file = path / manifest.model_file
        if not manifest.runs_published_ort or manifest.sha256 is None:
            return model_file
        try:
            digest = self._digests.of(model_file)
        except OSError as exc:
            raise LoadFailed(
                f"{manifest.model_file!r} could not be read ({type(exc).__name__})"
            ) from exc
        if digest != manifest.sha256:
            raise LoadFailed(
                f"model file {manifest.model_file!r} does not match the sha256 in {MANIFEST_NAME}"
            )
        return model_file

    def _base_session(self, path: Path, base: SharedBase) -> tuple[ort.InferenceSession, int]:
        """The shared base's session and the bytes it holds. Its digest is checked as it is
        made: no artifact can pass another graph off under a digest that other tenants'
        models will then run (an ORT-format file is made from bytes of that digest only)."""
        if self._fast_loads is not None:
            try:
                ort_file = self._fast_loads.ort_file(
                    path, base.model_file, sha256=base.sha256, published=None
                )
            except NoFastLoad:
                pass
            else:
                return measured(
                    lambda: _session(ort_file, base.model_file, True, ort_format=True),
                    ort_file.stat().st_size,
                )
        verified = verified_path(path, base.model_file, base.sha256)
        return measured(lambda: _session(verified, base.model_file, True), verified.stat().st_size)


def _dense_bytes(path: Path, manifest: ModelManifest) -> int | None:
    """What the model's head holds run as weight arrays; ``None``: it runs in a session."""
    head = dense_head(path / manifest.model_file) if manifest.base is not None else None
    if head is None:
        return None
    head.close()
    return head.held_bytes


def _session(
    model_file: Path, shown_name: str, prepack: bool, *, ort_format: bool = False
) -> ort.InferenceSession:
    if not model_file.is_file():
        raise LoadFailed(f"artifact has no {shown_name}")
    try:
        return ort.InferenceSession(
            str(model_file),
            sess_options=session_options(prepack=prepack, ort_file=ort_format),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # InvalidProtobuf, Fail, NotImplemented …
        # ORT puts the absolute path in its message; callers must never see host paths.
        reason = first_line(exc).replace(str(model_file), shown_name)
        raise LoadFailed(f"not a loadable ONNX model: {reason}") from exc
