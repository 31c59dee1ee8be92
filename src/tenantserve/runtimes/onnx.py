"""ONNX Runtime: one InferenceSession per model, one intra-op and one inter-op thread each."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from tenantserve.errors import InvalidInput, LoadFailed, PredictFailed
from tenantserve.runtimes.base import SharedUsage
from tenantserve.runtimes.run_stop import current_run_stop
from tenantserve.runtimes.shared import BaseHeadModel, SharedBlocks, measured, verified_path
from tenantserve.types import DATATYPE_TO_DTYPE, ModelManifest, Tensors, TensorSpec

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
        # Unknown names first: a misspelt input is reported as such, not as a missing one.
        extra = sorted(set(tensors) - {spec.name for spec in self._inputs})
        if extra:
            expected = ", ".join(spec.name for spec in self._inputs)
            raise InvalidInput(f"unexpected input {extra[0]!r}; the model takes: {expected}")
        feed = {spec.name: _conform(spec, tensors.get(spec.name)) for spec in self._inputs}
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
            raise PredictFailed(f"model failed to run: {_first_line(exc)}") from exc
        finally:
            if forget is not None:
                forget()
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self._session = None


def _conform(spec: TensorSpec, array: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """Check one input against the graph, converting only where no value can change."""
    if array is None:
        raise InvalidInput(f"missing input {spec.name!r}")
    if len(spec.shape) != array.ndim:
        raise InvalidInput(
            f"input {spec.name!r} has shape {list(array.shape)}; "
            f"the model expects {len(spec.shape)} dimensions {list(spec.shape)}"
        )
    for want, got in zip(spec.shape, array.shape, strict=True):
        if want not in (-1, got):
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(array.shape)}; "
                f"the model expects {list(spec.shape)}"
            )
    if spec.datatype == "BYTES":
        if array.dtype.kind not in ("O", "U", "S"):
            raise InvalidInput(f"input {spec.name!r} must be BYTES (text), not {array.dtype}")
        return _as_text(spec.name, array)
    want_dtype = DATATYPE_TO_DTYPE[spec.datatype]
    if array.dtype != want_dtype:
        if array.dtype.kind in ("O", "U", "S") or not np.can_cast(array.dtype, want_dtype, "safe"):
            raise InvalidInput(
                f"input {spec.name!r} has datatype {array.dtype}; the model expects {spec.datatype}"
            )
        array = array.astype(want_dtype)
    return array


def _as_text(name: str, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input {name!r} element {i} is not valid UTF-8") from exc
        elif not isinstance(item, str):
            raise InvalidInput(f"input {name!r} element {i} is not text")
        out[i] = item
    return out.reshape(array.shape)


# "[ONNXRuntimeError] : 1 : FAIL : " and "/onnxruntime_src/<file>:<line> <C++ signature> ":
# build paths and noise that would push the reason itself past the cut below.
_ORT_NOISE = re.compile(
    r"^\[ONNXRuntimeError\] : \d+ : \w+ : |/\S+\.(?:h|cc|cpp|c):\d+ .*?[)>] (?=[A-Z])"
)


def _first_line(exc: BaseException) -> str:
    text = _ORT_NOISE.sub("", str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


# y = Identity(x): the smallest valid model, to initialise ONNX Runtime at start-up (~10 MB of
# one-time set-up that would otherwise be measured as part of the first tenant's model).
_WARM_UP_MODEL = (
    b'\x08\t\x12\x00:7\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01wZ\x0f\n\x01x\x12\n\n\x08'
    b"\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11"
)


class OnnxRuntime:
    """Loads ``model.onnx`` as data (no custom ops, nothing executed).

    A model that declares a shared ``base`` gets the one session every such model shares
    (see :mod:`tenantserve.runtimes.shared`) and a session of its own for its head.
    """

    name = "onnx"

    def __init__(self) -> None:
        self._bases: SharedBlocks[ort.InferenceSession] = SharedBlocks()

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
            _WARM_UP_MODEL, sess_options=_session_options(), providers=["CPUExecutionProvider"]
        )
        session.run(None, {"x": np.ones(1, dtype=np.float32)})

    def load(self, path: Path, manifest: ModelManifest) -> OnnxModel | BaseHeadModel:
        if manifest.base is None:
            return OnnxModel(self._session(path, manifest.model_file))
        base = manifest.base
        base_session, release = self._bases.acquire(
            base.sha256,
            # The digest is checked as the shared session is made: no artifact can pass
            # another graph off under a digest that other tenants' models will then run.
            lambda: measured(
                lambda: self._session(path, base.model_file),
                (verified_path(path, base.model_file, base.sha256)).stat().st_size,
            ),
        )
        try:
            head = OnnxModel(self._session(path, manifest.model_file))
        except BaseException:
            release()
            raise
        return BaseHeadModel(OnnxModel(base_session), head, release)

    def _session(self, path: Path, file_name: str) -> ort.InferenceSession:
        model_file = path / file_name
        if not model_file.is_file():
            raise LoadFailed(f"artifact has no {file_name}")
        try:
            session = ort.InferenceSession(
                str(model_file), sess_options=_session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # InvalidProtobuf, Fail, NotImplemented …
            # ORT puts the absolute path in its message; callers must never see host paths.
            reason = _first_line(exc).replace(str(model_file), file_name)
            raise LoadFailed(f"not a loadable ONNX model: {reason}") from exc
        return session


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # A fixed thread budget whatever the number of models: the server's own
    # executor provides the parallelism; a session must not add threads of its own.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options
