"""ModelInferRequest ⇄ numpy tensors: raw contents and typed contents, both ways.

Raw contents (``raw_input_contents``, ``raw_output_contents``) use Triton's binary layout,
the HTTP binary extension's: protocols/oip/binary.py reads and writes both. Typed contents
use the ``InferTensorContents`` field of each datatype; FP16 has none, so it travels raw.

An answer is raw when the request sent raw inputs (tritonclient always does), or asked for
binary the way the HTTP extension does (request parameter ``binary_data_output``, output
parameter ``binary_data``), or holds an output with no typed field; typed otherwise. The
protocol allows one form per response, so it is all outputs or none. Every check shared with
the HTTP codec (names, datatypes, shapes, the extensions refused) is its code and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import InvalidInput, InvalidRequest, PredictFailed
from tenantserve.protocols.grpc._generated.grpc_service_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
)
from tenantserve.protocols.oip.binary import tensor_from_bytes, tensor_to_bytes
from tenantserve.protocols.oip.codec import checked_datatype, checked_name, checked_shape
from tenantserve.types import DATATYPE_TO_DTYPE, Tensors, TensorSpec, datatype_of

# Each datatype's typed field, and the dtype its values have on the wire.
_TYPED: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}


@dataclass(frozen=True, slots=True)
class InferCall:
    """A decoded ModelInferRequest.

    Attributes:
        id: the caller's request id, echoed in the response ("" for none).
        inputs: input name → array, in request order.
        outputs: names of the outputs asked for, or ``None`` for all of them.
        raw_outputs: whether the answer goes in ``raw_output_contents``.
    """

    id: str
    inputs: dict[str, npt.NDArray[Any]]
    outputs: tuple[str, ...] | None
    raw_outputs: bool

    def tensors(self, inputs: tuple[TensorSpec, ...]) -> Tensors:
        return self.inputs  # named inputs: the model checks them against its signature


def payload_bytes(request: ModelInferRequest) -> int:
    """About how many bytes of tensor data ``request`` carries (to decode it off the loop)."""
    size = sum(len(raw) for raw in request.raw_input_contents)
    for tensor in request.inputs:
        typed = _TYPED.get(tensor.datatype)
        if typed is not None:
            size += 8 * len(getattr(tensor.contents, typed[0]))
    return size


def decode_request(request: ModelInferRequest) -> InferCall:
    """The tensors and choices of ``request``.

    Raises:
        InvalidRequest: a malformed request (no inputs, raw contents that do not pair with
            the inputs, an unsupported extension).
        InvalidInput: a tensor that is malformed; the message names it.
    """
    if not request.inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs: "
            "give one for each input, in order, or use typed contents for all"
        )
    inputs: dict[str, npt.NDArray[Any]] = {}
    for index, tensor in enumerate(request.inputs):
        name = checked_name(tensor.name, "input")
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears more than once")
        _refuse_extensions(tensor.parameters, f"input {name!r}")
        datatype = checked_datatype(name, tensor.datatype)
        shape, count = checked_shape(name, list(tensor.shape))
        if not raw:
            inputs[name] = _from_typed(name, datatype, shape, count, tensor.contents)
        elif tensor.HasField("contents"):
            raise InvalidInput(f"input {name!r} has typed contents beside raw_input_contents")
        else:
            inputs[name] = _from_raw(name, datatype, shape, count, raw[index])
    _refuse_extensions(request.parameters, "request")
    outputs, binary = _requested_outputs(request)
    binary_default = _flag(request.parameters, "binary_data_output", "parameter")
    return InferCall(request.id, inputs, outputs, bool(raw) or binary_default or binary)


def encode_response(
    model_name: str, call: InferCall, outputs: Tensors, *, model_version: str = "1"
) -> ModelInferResponse:
    """The response to ``call``, its outputs raw or typed (see the module)."""
    typed: list[tuple[str, npt.NDArray[Any], str]] = []
    for name, array in outputs.items():
        try:
            typed.append((name, array, datatype_of(array)))
        except ValueError as exc:
            raise PredictFailed(f"output {name!r} has a type with no OIP datatype") from exc
    raw = call.raw_outputs or any(datatype not in _TYPED for _, _, datatype in typed)
    response = ModelInferResponse(model_name=model_name, model_version=model_version, id=call.id)
    for name, array, datatype in typed:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(tensor_to_bytes(array, datatype))
        else:
            _fill(tensor.contents, array, datatype)
    return response


def _from_raw(name: str, datatype: str, shape: list[int], count: int, raw: bytes) -> Any:
    if datatype != "BYTES":
        expected = count * DATATYPE_TO_DTYPE[datatype].itemsize
        if len(raw) != expected:
            raise InvalidInput(
                f"input {name!r}: raw_input_contents holds {len(raw)} bytes but shape {shape} "
                f"of {datatype} needs {expected}"
            )
    return tensor_from_bytes(name, datatype, shape, count, memoryview(raw))


def _from_typed(
    name: str, datatype: str, shape: list[int], count: int, contents: InferTensorContents
) -> npt.NDArray[Any]:
    typed = _TYPED.get(datatype)
    if typed is None:
        raise InvalidInput(
            f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    field, wire = typed
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} holds {count} elements but contents.{field} "
            f"has {len(values)}"
        )
    if datatype == "BYTES":
        array: npt.NDArray[Any] = np.empty(count, dtype=object)
        array[:] = [_text(name, index, item) for index, item in enumerate(values)]
        return array.reshape(shape)
    found = np.array(values, dtype=wire)
    target = DATATYPE_TO_DTYPE[datatype]
    if target != wire:  # INT8, INT16, UINT8, UINT16 travel in 32-bit fields
        limits = np.iinfo(target)
        if found.min() < limits.min or found.max() > limits.max:
            raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
        found = found.astype(target)
    return found.reshape(shape)


def _text(name: str, index: int, item: bytes) -> str:
    # Models (ONNX string tensors) take str, as the HTTP codecs give them.
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: BYTES item {index} is not valid UTF-8") from None


def _fill(contents: InferTensorContents, array: npt.NDArray[Any], datatype: str) -> None:
    field, wire = _TYPED[datatype]
    if datatype == "BYTES":
        values: list[Any] = [
            item if isinstance(item, bytes) else str(item).encode("utf-8")
            for item in array.reshape(-1).tolist()
        ]
    else:
        values = np.ascontiguousarray(array, dtype=wire).reshape(-1).tolist()
    getattr(contents, field).extend(values)


def _requested_outputs(request: ModelInferRequest) -> tuple[tuple[str, ...] | None, bool]:
    """The outputs asked for (``None``: all), and whether any of them asked for binary."""
    names: list[str] = []
    binary = False
    for output in request.outputs:
        name = checked_name(output.name, "output")
        if name in names:
            raise InvalidRequest(f"output {name!r} is requested more than once")
        parameters = output.parameters
        _refuse_extensions(parameters, f"output {name!r}")
        if "classification" in parameters and _value(parameters["classification"]):
            raise InvalidRequest(f"output {name!r}: the classification extension is not supported")
        binary = _flag(parameters, "binary_data", f"output {name!r}:") or binary
        names.append(name)
    return (tuple(names) if names else None), binary


def _refuse_extensions(parameters: Mapping[str, InferParameter], owner: str) -> None:
    if "shared_memory_region" in parameters:
        raise InvalidRequest(f"{owner}: the shared-memory extension is not supported")


def _flag(parameters: Mapping[str, InferParameter], key: str, owner: str) -> bool:
    if key not in parameters:
        return False
    parameter = parameters[key]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidRequest(f"{owner} {key!r} must be true or false")
    return parameter.bool_param


def _value(parameter: InferParameter) -> object:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)
