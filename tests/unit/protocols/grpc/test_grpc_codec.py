"""ModelInferRequest ⇄ tensors: raw and typed contents, the form of the answer, the refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from tenantserve.errors import InvalidInput, InvalidRequest, PredictFailed
from tenantserve.protocols.grpc._generated.grpc_service_pb2 import (
    InferTensorContents,
    ModelInferRequest,
)
from tenantserve.protocols.grpc.codec import decode_request, encode_response, payload_bytes
from tenantserve.protocols.oip.binary import tensor_to_bytes
from tenantserve.protocols.oip.codec import decode_request as decode_http

Input = ModelInferRequest.InferInputTensor
Output = ModelInferRequest.InferRequestedOutputTensor


def _raw(*arrays: tuple[str, str, np.ndarray[Any, Any]]) -> ModelInferRequest:
    request = ModelInferRequest(model_name="acme/m", id="req-1")
    for name, datatype, array in arrays:
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(tensor_to_bytes(array, datatype))
    return request


def _typed(name: str, datatype: str, shape: list[int], **contents: Any) -> ModelInferRequest:
    request = ModelInferRequest(model_name="acme/m")
    request.inputs.add(
        name=name, datatype=datatype, shape=shape, contents=InferTensorContents(**contents)
    )
    return request


def _error(request: ModelInferRequest) -> str:
    with pytest.raises((InvalidInput, InvalidRequest)) as caught:
        decode_request(request)
    return str(caught.value)


def test_raw_inputs_decode_to_arrays_and_the_answer_goes_raw() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[2**40, -3]], dtype=np.int64)
    text = np.array([["héllo"], ["bye"]], dtype=object)
    call = decode_request(_raw(("x", "FP32", x), ("ids", "INT64", ids), ("text", "BYTES", text)))
    np.testing.assert_array_equal(call.inputs["x"], x)
    np.testing.assert_array_equal(call.inputs["ids"], ids)
    assert call.inputs["text"].tolist() == [["héllo"], ["bye"]]  # str, as models take
    assert (call.id, call.outputs, call.raw_outputs) == ("req-1", None, True)

    response = encode_response("acme/m", call, {"y": x * 2, "label": text})
    assert (response.model_name, response.model_version, response.id) == ("acme/m", "1", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("y", "FP32", [2, 3]),
        ("label", "BYTES", [2, 1]),
    ]
    assert response.raw_output_contents[0] == (x * 2).tobytes()
    assert response.raw_output_contents[1] == tensor_to_bytes(text, "BYTES")
    assert not response.outputs[0].HasField("contents")


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("FP32", "fp32_contents", [0.5, -1.25, 3.0, 4.0]),
        ("FP64", "fp64_contents", [0.1, 2.0, -3.5, 1e300]),
        ("INT8", "int_contents", [-128, 0, 5, 127]),
        ("INT32", "int_contents", [-(2**31), 0, 1, 2**31 - 1]),
        ("INT64", "int64_contents", [2**40, -(2**63), 7, 0]),
        ("UINT16", "uint_contents", [0, 1, 65535, 3]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1, 3, 4]),
        ("BOOL", "bool_contents", [True, False, True, True]),
    ],
)
def test_typed_contents_round_trip(datatype: str, field: str, values: list[Any]) -> None:
    call = decode_request(_typed("x", datatype, [2, 2], **{field: values}))
    assert call.inputs["x"].shape == (2, 2)
    assert call.inputs["x"].reshape(-1).tolist() == values
    assert not call.raw_outputs
    response = encode_response("acme/m", call, {"y": call.inputs["x"]})
    assert list(getattr(response.outputs[0].contents, field)) == values
    assert response.outputs[0].datatype == datatype
    assert not response.raw_output_contents


def test_typed_bytes_are_text_and_must_be_utf8() -> None:
    call = decode_request(_typed("t", "BYTES", [2, 1], bytes_contents=["ça".encode(), b"x"]))
    assert call.inputs["t"].tolist() == [["ça"], ["x"]]
    response = encode_response("acme/m", call, {"label": call.inputs["t"]})
    assert list(response.outputs[0].contents.bytes_contents) == ["ça".encode(), b"x"]
    bad = _typed("t", "BYTES", [1], bytes_contents=[b"\xff"])
    assert _error(bad) == "input 't': BYTES item 0 is not valid UTF-8"


def test_typed_values_must_fit_the_datatype_and_the_shape() -> None:
    over = _typed("x", "INT8", [2], int_contents=[1, 300])
    assert _error(over) == "input 'x': a value is out of range for INT8"
    short = _typed("x", "FP32", [2, 2], fp32_contents=[1.0])
    assert (
        _error(short) == "input 'x': shape [2, 2] holds 4 elements but contents.fp32_contents has 1"
    )
    fp16 = _typed("x", "FP16", [1])
    assert "FP16 has no typed contents field; send it in raw_input_contents" in _error(fp16)


def test_raw_contents_must_pair_with_the_inputs_and_fit_their_shape() -> None:
    request = _raw(("x", "FP32", np.zeros((1, 4), np.float32)))
    request.inputs.add(name="y", datatype="FP32", shape=[1])
    assert "raw_input_contents holds 1 tensors for 2 inputs" in _error(request)
    short = ModelInferRequest(raw_input_contents=[b"\0" * 12])
    short.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    expected = "input 'x': raw_input_contents holds 12 bytes but shape [1, 4] of FP32 needs 16"
    assert _error(short) == expected
    both = _raw(("x", "FP32", np.zeros(2, np.float32)))
    both.inputs[0].contents.fp32_contents.extend([1.0, 2.0])
    assert _error(both) == "input 'x' has typed contents beside raw_input_contents"


def test_checks_shared_with_http_say_the_same() -> None:
    cases = [
        (_typed("x", "FP33", [1], fp32_contents=[1.0]), {"datatype": "FP33", "shape": [1]}),
        (_typed("x", "FP32", [0]), {"datatype": "FP32", "shape": [0]}),
        (_typed("x", "FP32", [-1]), {"datatype": "FP32", "shape": [-1]}),
        (_typed("x", "FP32", [1] * 33), {"datatype": "FP32", "shape": [1] * 33}),
    ]
    for request, tensor in cases:
        body = {"inputs": [{"name": "x", "data": [1.0], **tensor}]}
        with pytest.raises(InvalidInput) as http:
            decode_http(orjson.dumps(body))
        assert _error(request) == str(http.value)
    assert _error(ModelInferRequest()) == "'inputs' must be a non-empty list of tensors"
    twice = _typed("x", "FP32", [1], fp32_contents=[1.0])
    twice.inputs.append(twice.inputs[0])
    assert _error(twice) == "input 'x' appears more than once"


def test_outputs_asked_for_and_the_extensions_refused() -> None:
    request = _typed("x", "FP32", [1], fp32_contents=[1.0])
    request.outputs.add(name="b")
    request.outputs.add(name="a")
    assert decode_request(request).outputs == ("b", "a")
    request.outputs.add(name="a")
    assert _error(request) == "output 'a' is requested more than once"

    classify = _typed("x", "FP32", [1], fp32_contents=[1.0])
    classify.outputs.add(name="y").parameters["classification"].int64_param = 3
    assert _error(classify) == "output 'y': the classification extension is not supported"
    shared = _typed("x", "FP32", [1], fp32_contents=[1.0])
    shared.inputs[0].parameters["shared_memory_region"].string_param = "r0"
    assert _error(shared) == "input 'x': the shared-memory extension is not supported"
    wrong = _typed("x", "FP32", [1], fp32_contents=[1.0])
    wrong.parameters["binary_data_output"].string_param = "yes"
    assert _error(wrong) == "parameter 'binary_data_output' must be true or false"


def test_binary_asked_for_makes_a_typed_request_answer_raw() -> None:
    request = _typed("x", "FP32", [2], fp32_contents=[1.0, 2.0])
    request.parameters["binary_data_output"].bool_param = True
    assert decode_request(request).raw_outputs
    per_output = _typed("x", "FP32", [2], fp32_contents=[1.0, 2.0])
    per_output.outputs.add(name="y").parameters["binary_data"].bool_param = True
    assert decode_request(per_output).raw_outputs
    # FP16 has no typed field: a response holding one is raw, all of it (one form a response).
    call = decode_request(_typed("x", "FP32", [2], fp32_contents=[1.0, 2.0]))
    half = np.array([1.5, 2.0], np.float16)
    response = encode_response("acme/m", call, {"a": call.inputs["x"], "h": half})
    assert response.raw_output_contents[1] == half.tobytes()
    assert not response.outputs[0].HasField("contents")


def test_an_output_with_no_oip_datatype_is_a_model_failure() -> None:
    call = decode_request(_typed("x", "FP32", [1], fp32_contents=[1.0]))
    with pytest.raises(PredictFailed, match="output 'c' has a type with no OIP datatype"):
        encode_response("acme/m", call, {"c": np.array([1 + 2j])})


def test_payload_bytes_counts_raw_and_typed_data() -> None:
    raw = _raw(("x", "FP32", np.zeros((4, 4), np.float32)))
    assert payload_bytes(raw) == 64
    assert payload_bytes(_typed("x", "INT64", [3], int64_contents=[1, 2, 3])) == 24
