"""OIP v2 codec: JSON and binary tensors in, JSON and binary outputs back, bad input refused."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from tenantserve.errors import InvalidInput, InvalidRequest
from tenantserve.protocols.oip.codec import InferRequest, decode_request, encode_response


def _json_body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def _tensor(name: str, datatype: Any, shape: Any, data: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _triton_body(
    inputs: list[triton.InferInput], outputs: list[triton.InferRequestedOutput] | None = None
) -> tuple[bytes, str | None]:
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs)
    return body, None if header_length is None else str(header_length)


def _triton_input(name: str, array: np.ndarray[Any, Any], binary: bool) -> triton.InferInput:
    datatype = "BYTES" if array.dtype == object else triton.np_to_triton_dtype(array.dtype)
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


# -- JSON requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("FP32", [1.5, 2, -3.25, 4], np.float32),
        ("FP64", [1e300, 0, -1, 2.5], np.float64),
        ("FP16", [1, 2, 3, 65504], np.float16),
        ("INT8", [-128, 0, 1, 127], np.int8),
        ("INT64", [-(2**63), 0, 1, 2**63 - 1], np.int64),
        ("UINT8", [0, 1, 2, 255], np.uint8),
        ("UINT64", [0, 1, 2, 2**64 - 1], np.uint64),
        ("BOOL", [True, False, True, True], np.bool_),
    ],
)
def test_json_tensors_decode_to_their_dtype(datatype: str, data: list[Any], dtype: type) -> None:
    request = decode_request(_json_body(_tensor("x", datatype, [2, 2], data)))
    array = request.inputs["x"]
    assert array.dtype == np.dtype(dtype)
    assert array.shape == (2, 2)
    np.testing.assert_array_equal(array.reshape(-1), np.array(data, dtype=dtype))


def test_nested_and_flat_data_give_the_same_tensor() -> None:
    flat = decode_request(_json_body(_tensor("x", "INT32", [2, 3], [1, 2, 3, 4, 5, 6])))
    nested = decode_request(_json_body(_tensor("x", "INT32", [2, 3], [[1, 2, 3], [4, 5, 6]])))
    np.testing.assert_array_equal(flat.inputs["x"], nested.inputs["x"])
    assert nested.inputs["x"].shape == (2, 3)


def test_bytes_are_utf8_strings_and_keep_nul_characters() -> None:
    request = decode_request(_json_body(_tensor("text", "BYTES", [3], ["héllo", "a\x00b", ""])))
    assert request.inputs["text"].tolist() == ["héllo", "a\x00b", ""]
    assert request.inputs["text"].dtype == object


def test_request_id_outputs_and_binary_choices_are_kept() -> None:
    body = _json_body(
        _tensor("x", "FP32", [1], [1.0]),
        id="req-7",
        outputs=[{"name": "b", "parameters": {"binary_data": True}}, {"name": "a"}],
        parameters={"binary_data_output": False},
    )
    request = decode_request(body)
    assert request.id == "req-7"
    assert request.outputs == ("b", "a")
    assert request.wants_binary("b")
    assert not request.wants_binary("a")


def test_no_outputs_means_all_outputs() -> None:
    assert decode_request(_json_body(_tensor("x", "FP32", [1], [1.0]))).outputs is None


# -- binary requests (built by tritonclient itself) ------------------------------------------


def test_tritonclient_binary_body_decodes() -> None:
    floats = np.arange(12, dtype=np.float32).reshape(3, 4)
    texts = np.array([["hé", "a\x00b"]], dtype=object)
    ints = np.array([7, 8, 9], dtype=np.int64)
    body, header_length = _triton_body(
        [
            _triton_input("floats", floats, binary=True),
            _triton_input("texts", texts, binary=True),
            _triton_input("ints", ints, binary=False),
        ]
    )
    assert header_length is not None
    request = decode_request(body, header_length)
    np.testing.assert_array_equal(request.inputs["floats"], floats)
    assert request.inputs["floats"].dtype == np.float32
    assert request.inputs["texts"].tolist() == [["hé", "a\x00b"]]
    np.testing.assert_array_equal(request.inputs["ints"], ints)
    assert request.binary_default  # tritonclient asks for binary outputs when it names none


def test_tritonclient_json_body_decodes() -> None:
    floats = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    body, header_length = _triton_body([_triton_input("floats", floats, binary=False)])
    assert header_length is None
    np.testing.assert_array_equal(decode_request(body).inputs["floats"], floats)


# -- responses, read back by tritonclient ---------------------------------------------------


def _outputs() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "scores": np.array([[0.25, 0.75], [1.0, np.nan]], dtype=np.float32),
        "label": np.array([b"yes", "nö"], dtype=object),
        "count": np.array([3], dtype=np.int64),
    }


def test_json_response_reads_back_in_tritonclient() -> None:
    request = InferRequest(id="r1", inputs={})
    body, header_length = encode_response("acme/macros", request, _outputs())
    assert header_length is None
    doc = orjson.loads(body)
    assert doc["model_name"] == "acme/macros"
    assert doc["id"] == "r1"
    result = triton.InferenceServerClient.parse_response_body(body)
    np.testing.assert_array_equal(result.as_numpy("scores")[0], [0.25, 0.75])
    assert np.isnan(result.as_numpy("scores")[1, 1])  # NaN travels as null
    assert result.as_numpy("label").tolist() == ["yes", "nö"]
    assert result.as_numpy("count").tolist() == [3]


def test_binary_response_reads_back_in_tritonclient() -> None:
    request = InferRequest(id=None, inputs={}, binary_default=True)
    body, header_length = encode_response("m", request, _outputs())
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert all("data" not in output for output in header["outputs"])
    result = triton.InferenceServerClient.parse_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("scores"), _outputs()["scores"])
    assert result.as_numpy("label").tolist() == [b"yes", "nö".encode()]
    assert result.as_numpy("count").tolist() == [3]


def test_binary_can_be_chosen_per_output() -> None:
    request = InferRequest(id=None, inputs={}, binary_outputs=(("count", True),))
    body, header_length = encode_response("m", request, _outputs())
    assert header_length is not None
    outputs = {o["name"]: o for o in orjson.loads(body[:header_length])["outputs"]}
    assert outputs["count"]["parameters"] == {"binary_data_size": 8}
    assert "data" in outputs["scores"]
    assert "data" in outputs["label"]
    assert len(body) == header_length + 8


# -- bad requests (RELIABILITY 1-3, 6): InvalidRequest, and InvalidInput naming the input ----


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"inputs": [', b"[1, 2]", b'"text"', b"{}", b'{"inputs": []}',
     b'{"inputs": {}}', b'{"inputs": [1]}', b'{"inputs": [{"datatype": "FP32"}]}',
     b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}',
     b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [Infinity]}]}',
     b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1e999]}]}',
     b"\xff\xfe{}", b'{"id": 5, "inputs": []}'],
)  # fmt: skip
def test_malformed_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_request(body)


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        (_tensor("feat", "FP32", [2, 3], [1, 2, 3, 4, 5]), "holds 6 elements"),
        (_tensor("feat", "FP32", [2], [1, 2, 3]), "holds 2 elements"),
        (_tensor("feat", "FLOAT", [1], [1]), "unknown datatype"),
        (_tensor("feat", 32, [1], [1]), "unknown datatype"),
        (_tensor("feat", "FP32", [0, 3], []), "empty"),
        (_tensor("feat", "FP32", [-1], [1]), "shape"),
        (_tensor("feat", "FP32", [1.5], [1]), "shape"),
        (_tensor("feat", "FP32", "2", [1, 2]), "shape"),
        (_tensor("feat", "FP32", [1] * 40, [1]), "shape"),
        (_tensor("feat", "UINT8", [2], [1, 300]), "out of range for UINT8"),
        (_tensor("feat", "INT8", [2], [1, -129]), "out of range for INT8"),
        (_tensor("feat", "UINT32", [1], [-1]), "out of range"),
        (_tensor("feat", "INT64", [2], [1, 2**63]), "out of range for INT64"),
        (_tensor("feat", "UINT64", [2], [-1, 2**63]), "out of range for UINT64"),
        (_tensor("feat", "FP32", [1], [1e39]), "out of range for FP32"),
        (_tensor("feat", "FP16", [1], [70000]), "out of range for FP16"),
        (_tensor("feat", "INT32", [2], [1, 2.5]), "integers"),
        (_tensor("feat", "FP32", [2], ["1.5", "2"]), "numbers"),
        (_tensor("feat", "FP32", [2], [None, 1]), "numbers"),
        (_tensor("feat", "BOOL", [2], [1, 0]), "true or false"),
        (_tensor("feat", "INT32", [3], [[1, 2], [3]]), "ragged"),
        (_tensor("feat", "BYTES", [2], ["a", 1]), "strings"),
        (_tensor("feat", "BYTES", [3], [["a", "b"], ["c"]]), "strings"),
        (_tensor("feat", "BYTES", [1], [b"\x00".decode() + "ok", "extra"]), "holds 1 elements"),
        ({"name": "feat", "datatype": "FP32", "shape": [1]}, "no 'data'"),
        ({"name": "feat", "datatype": "FP32", "shape": [1], "data": 1.0}, "no 'data'"),
    ],
)
def test_bad_tensors_are_refused_naming_the_input(tensor: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_request(_json_body(tensor))
    assert "'feat'" in str(caught.value)
    assert needle in str(caught.value)


def test_integers_past_64_bits_are_refused() -> None:
    # orjson reads 2**64 as a float, so it fails as "not an integer", still naming the input.
    body = b'{"inputs": [{"name": "feat", "datatype": "UINT64", "shape": [1], "data": [%d]}]}'
    with pytest.raises(InvalidInput, match="'feat'"):
        decode_request(body % 2**64)


def test_duplicate_input_names_are_refused() -> None:
    body = _json_body(_tensor("x", "FP32", [1], [1]), _tensor("x", "FP32", [1], [2]))
    with pytest.raises(InvalidInput, match="'x' appears more than once"):
        decode_request(body)


def _nested(datatype: str, levels: int) -> bytes:
    leaf = b'"a"' if datatype == "BYTES" else b"1.0"
    data = b"[" * levels + leaf + b"]" * levels
    template = b'{"inputs": [{"name": "deep", "datatype": "%s", "shape": [1], "data": %s}]}'
    return template % (datatype.encode(), data)


@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_ten_thousand_levels_of_nesting_are_a_bad_request(datatype: str) -> None:
    # orjson stops at its depth limit (1,024) without recursion: a 400, not a crash.
    with pytest.raises(InvalidRequest, match="depth"):
        decode_request(_nested(datatype, 10_000))


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "INT64"])
def test_nesting_deeper_than_any_tensor_is_refused_naming_the_input(datatype: str) -> None:
    with pytest.raises(InvalidInput, match="'deep'"):
        decode_request(_nested(datatype, 500))


def test_a_deep_ragged_branch_is_refused() -> None:
    deep = b"[" * 500 + b"1.0" + b"]" * 500
    body = b'{"inputs": [{"name": "deep", "datatype": "FP32", "shape": [2], "data": [1.0, %s]}]}'
    with pytest.raises(InvalidInput, match="'deep'"):
        decode_request(body % deep)


@pytest.mark.parametrize(
    ("parameters", "extra"),
    [
        ({"shared_memory_region": "r", "shared_memory_byte_size": 4}, {}),
        ({"binary_data_size": 4}, {"data": [1.0]}),
    ],
)
def test_unsupported_tensor_parameters_are_refused(
    parameters: dict[str, Any], extra: dict[str, Any]
) -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "parameters": parameters, **extra}
    with pytest.raises(InvalidRequest, match="'x'"):
        decode_request(_json_body(tensor))


def test_classification_outputs_are_refused() -> None:
    body = _json_body(
        _tensor("x", "FP32", [1], [1.0]),
        outputs=[{"name": "probs", "parameters": {"classification": 3}}],
    )
    with pytest.raises(InvalidRequest, match="classification"):
        decode_request(body)


# -- bad binary bodies: a clear 400, never a mis-parse (RELIABILITY 6) ------------------------


def _binary(header: dict[str, Any], payload: bytes) -> tuple[bytes, str]:
    text = orjson.dumps(header)
    return text + payload, str(len(text))


def _binary_input(datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"inputs": [{"name": "raw", "datatype": datatype, "shape": shape,
                        "parameters": {"binary_data_size": size}}]}  # fmt: skip


@pytest.mark.parametrize(
    ("header", "payload", "needle"),
    [
        (_binary_input("FP32", [2], 8), b"\0" * 4, "past the end"),
        (_binary_input("FP32", [2], 4), b"\0" * 4, "needs 8"),
        (_binary_input("FP32", [1], 4), b"\0" * 8, "declare 4"),
        (_binary_input("FP32", [1], -4), b"\0" * 4, "binary_data_size"),
        (_binary_input("BYTES", [1], 2), b"\x05\x00", "length prefix"),
        (_binary_input("BYTES", [1], 6), struct.pack("<I", 9) + b"ab", "claims 9 bytes"),
        (_binary_input("BYTES", [2], 5), struct.pack("<I", 1) + b"a", "needs 2 BYTES items"),
        (_binary_input("BYTES", [1], 10), (struct.pack("<I", 1) + b"a") * 2, "more than 1"),
        (_binary_input("BYTES", [1], 6), struct.pack("<I", 2) + b"\xff\xfe", "UTF-8"),
    ],
)  # fmt: skip
def test_bad_binary_bodies_are_refused(header: dict[str, Any], payload: bytes, needle: str) -> None:
    body, header_length = _binary(header, payload)
    with pytest.raises(InvalidRequest) as caught:
        decode_request(body, header_length)
    assert needle in str(caught.value)


@pytest.mark.parametrize("header_length", ["-1", "abc", "1e3", "99999", " "])
def test_a_bad_header_length_is_refused(header_length: str) -> None:
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
        decode_request(b'{"inputs": []}', header_length)


def test_a_header_length_that_cuts_the_json_is_refused() -> None:
    body = _json_body(_tensor("x", "FP32", [1], [1.0]))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        decode_request(body, str(len(body) - 3))


def test_binary_bool_and_unaligned_tensors_decode() -> None:
    header = {"inputs": [
        {"name": "flag", "datatype": "BOOL", "shape": [3], "parameters": {"binary_data_size": 3}},
        {"name": "wide", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}},
    ]}  # fmt: skip
    body, header_length = _binary(header, b"\x01\x00\x01" + struct.pack("<d", 2.5))
    request = decode_request(body, header_length)
    assert request.inputs["flag"].tolist() == [True, False, True]
    assert request.inputs["wide"].tolist() == [2.5]
    assert request.inputs["wide"].flags.aligned
