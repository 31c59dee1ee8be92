"""OIP v2 infer bodies ⇄ numpy tensors: JSON data and Triton's binary tensor extension.

Validation lives here rather than in a pydantic schema: one pass over plain ``orjson`` output
keeps the data path fast. Every error about a tensor names the tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from starlette.datastructures import Headers
from starlette.responses import Response

from tenantserve.errors import InvalidInput, InvalidRequest, PredictFailed
from tenantserve.protocols.arrays import MAX_RANK, to_array
from tenantserve.protocols.oip.binary import tensor_from_bytes, tensor_to_bytes
from tenantserve.types import DATATYPE_TO_DTYPE, ResolvedModel, Tensors, datatype_of

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The request and response header that marks a binary-extension body (Triton)."""

MAX_NAME_CHARS = 256

# curl -d sends form encoding by default; its body is still our JSON, so it is let through.
_ACCEPTED_TYPES = frozenset(
    {"", "application/json", "application/octet-stream", "application/x-www-form-urlencoded"}
)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded infer request.

    Attributes:
        id: the caller's request id, echoed in the response.
        inputs: input name → array, in request order.
        outputs: names of the outputs asked for, or ``None`` for all of them.
        binary_outputs: per requested output, whether to return it in binary form.
        binary_default: binary form for outputs not listed (``binary_data_output``).
    """

    id: str | None
    inputs: dict[str, npt.NDArray[Any]]
    outputs: tuple[str, ...] | None = None
    binary_outputs: tuple[tuple[str, bool], ...] = ()
    binary_default: bool = False

    def wants_binary(self, output: str) -> bool:
        """Whether ``output`` goes back as raw bytes after the JSON header."""
        return dict(self.binary_outputs).get(output, self.binary_default)


class _HttpCodec:
    """OIP v2 infer bodies over HTTP (JSON, or JSON plus Triton's binary tensors) ⇄ tensors.
    OIP names its inputs, so a parsed request holds its tensors (the model checks them)."""

    def parse(self, headers: Headers, body: bytes) -> InferRequest:
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in _ACCEPTED_TYPES and not media_type.endswith("+json"):
            raise InvalidRequest(
                f"unsupported Content-Type {media_type[:64]!r}: send application/json, or no "
                f"type with {HEADER_LENGTH} for binary tensors"
            )
        lengths = set(headers.getlist(HEADER_LENGTH))
        if len(lengths) > 1:
            # Which one a proxy in front of us honoured is unknowable: refuse, not guess.
            raise InvalidRequest(f"{HEADER_LENGTH} is given more than once, with different values")
        return decode_request(body, lengths.pop() if lengths else None)

    def encode(self, parsed: InferRequest, model: ResolvedModel, outputs: Tensors) -> Response:
        payload, header_length = encode_response(
            model.name.value, parsed, outputs, model_version=model.version
        )
        if header_length is None:
            return Response(payload, media_type="application/json")
        headers = {HEADER_LENGTH: str(header_length)}
        return Response(payload, media_type="application/octet-stream", headers=headers)


HTTP_CODEC = _HttpCodec()


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse an infer body; ``header_length`` is the ``Inference-Header-Content-Length`` value.

    Raises:
        InvalidRequest: malformed JSON or structure.
        InvalidInput: a tensor that is malformed; the message names it.
    """
    header, binary = _split(body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")

    inputs: dict[str, npt.NDArray[Any]] = {}
    offset = 0
    for raw in raw_inputs:
        name = _name_of(raw, "input")
        if name in inputs:
            raise InvalidInput(f"input {name!r} appears more than once")
        inputs[name], used = _decode_input(name, raw, binary, offset)
        offset += used
    if offset != len(binary):
        raise InvalidRequest(
            f"the body holds {len(binary)} bytes of binary data but the inputs declare {offset}"
        )
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"))
    parameters = _parameters(doc, "request")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidRequest("parameter 'binary_data_output' must be true or false")
    return InferRequest(request_id, inputs, outputs, binary_outputs, binary_default)


def encode_response(
    model_name: str, request: InferRequest, outputs: Tensors, *, model_version: str = "1"
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output is in binary form."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, array in outputs.items():
        try:
            datatype = datatype_of(array)
        except ValueError as exc:
            raise PredictFailed(f"output {name!r} has a type with no OIP datatype") from exc
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.wants_binary(name):
            blob = tensor_to_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(array, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {
        "model_name": model_name, "model_version": model_version, "outputs": entries,
    }  # fmt: skip
    if request.id is not None:
        doc["id"] = request.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > len(body):
        raise InvalidRequest(f"{HEADER_LENGTH} must be a byte count within the body")
    size = int(text)
    return body[:size], memoryview(body)[size:]


def _name_of(raw: object, kind: str) -> str:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"each {kind} must be a JSON object")
    return checked_name(raw.get("name"), kind)


def checked_name(name: object, kind: str) -> str:
    """A tensor's name (``kind``: input or output), as every OIP transport limits it."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(f"each {kind} needs a 'name' of 1 to {MAX_NAME_CHARS} characters")
    return name


def _parameters(raw: dict[str, Any], owner: str) -> dict[str, Any]:
    parameters = raw.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"'parameters' of {owner} must be a JSON object")
    if "shared_memory_region" in parameters:
        raise InvalidRequest(f"{owner}: the shared-memory extension is not supported")
    return parameters


def _decode_input(
    name: str, raw: dict[str, Any], binary: memoryview, offset: int
) -> tuple[npt.NDArray[Any], int]:
    datatype = checked_datatype(name, raw.get("datatype"))
    shape, count = checked_shape(name, raw.get("shape"))
    size = _parameters(raw, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise InvalidInput(f"input {name!r} has both 'data' and binary_data_size")
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary_data_size runs past the end of the body")
        chunk = binary[offset : offset + size]
        return tensor_from_bytes(name, datatype, shape, count, chunk), size
    data = raw.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r} has no 'data' list (and no binary_data_size)")
    array = to_array(name, datatype, data)
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: shape {shape} holds {count} elements but 'data' has {array.size}"
        )
    return array.reshape(shape), 0


def checked_datatype(name: str, datatype: object) -> str:
    """Input ``name``'s declared datatype, one OIP knows."""
    if not isinstance(datatype, str) or datatype not in DATATYPE_TO_DTYPE:
        shown = datatype if isinstance(datatype, str) else type(datatype).__name__
        raise InvalidInput(
            f"input {name!r}: unknown datatype {shown[:32]!r}; one of {sorted(DATATYPE_TO_DTYPE)}"
        )
    return datatype


def checked_shape(name: str, shape: object) -> tuple[list[int], int]:
    """Input ``name``'s declared shape, and how many elements it holds (never 0)."""
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(dim) is int and dim >= 0 for dim in shape)
    ):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} sizes")
    count = math.prod(shape)
    if count == 0:
        raise InvalidInput(f"input {name!r} is empty (shape {shape})")
    return shape, count


def _requested_outputs(
    raw: object,
) -> tuple[tuple[str, ...] | None, tuple[tuple[str, bool], ...]]:
    if raw is None or raw == []:
        return None, ()
    if not isinstance(raw, list):
        raise InvalidRequest("'outputs' must be a list")
    names: list[str] = []
    binary: list[tuple[str, bool]] = []
    for item in raw:
        name = _name_of(item, "output")
        if name in names:
            raise InvalidRequest(f"output {name!r} is requested more than once")
        parameters = _parameters(item, f"output {name!r}")
        if parameters.get("classification"):
            raise InvalidRequest(f"output {name!r}: the classification extension is not supported")
        wants = parameters.get("binary_data")
        if wants is not None:
            if not isinstance(wants, bool):
                raise InvalidRequest(f"output {name!r}: 'binary_data' must be true or false")
            binary.append((name, wants))
        names.append(name)
    return tuple(names), tuple(binary)


def _json_data(array: npt.NDArray[Any], datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            for item in array.reshape(-1).tolist()
        ]
    # A native-order contiguous copy: orjson serialises it directly (NaN becomes null).
    return np.ascontiguousarray(array, dtype=DATATYPE_TO_DTYPE[datatype]).reshape(-1)
