"""Property tests of the decoders (RELIABILITY 7): any bytes either decode or raise our 400.

For arbitrary bytes, JSON-like documents shaped like infer requests, Triton binary bodies and
SageMaker invocation bodies, the OIP decoder, the binary tensor decoder and the SageMaker codec
either return tensors or raise :class:`InvalidRequest` (answered 400) — never another
exception, which the server would answer with a 500. What they do return is checked too: the
declared shape and datatype, and the same tensors after an encode and a second decode.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantserve.errors import InvalidRequest
from tenantserve.protocols.arrays import to_array
from tenantserve.protocols.oip.binary import tensor_from_bytes
from tenantserve.protocols.oip.codec import InferRequest, decode_request, encode_response
from tenantserve.protocols.sagemaker.codec import decode_invocation
from tenantserve.types import DATATYPE_TO_DTYPE, TensorSpec

pytestmark = pytest.mark.fuzz

DATATYPES = sorted(DATATYPE_TO_DTYPE)


def fuzz_examples(default: int = 200) -> int:
    """``FUZZ_EXAMPLES`` (``make fuzz`` sets 3000), else a count for ``make test``."""
    return int(os.environ.get("FUZZ_EXAMPLES", str(default)))


def fuzz(strategy: st.SearchStrategy[Any]) -> Callable[[Callable[[Any], None]], Callable[[], None]]:
    """Run the decorated check on ``fuzz_examples()`` values of ``strategy``; prints the count.

    The count is read when the test runs, not at import, so the environment decides it.
    """

    def decorate(check: Callable[[Any], None]) -> Callable[[], None]:
        def test() -> None:
            runs = 0

            def counted(value: Any) -> None:
                nonlocal runs
                runs += 1
                check(value)

            settings(
                max_examples=fuzz_examples(),
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )(given(strategy)(counted))()
            print(f"\nfuzz {check.__name__}: {runs} examples, 0 unexpected exceptions")

        test.__name__ = check.__name__
        return test

    return decorate


# -- strategies --------------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def _tensor_data(datatype: str, count: int) -> st.SearchStrategy[Any]:
    """Mostly values of the right kind and count; sometimes anything at all."""
    kind = DATATYPE_TO_DTYPE[datatype].kind
    element: st.SearchStrategy[Any]
    if kind == "b":
        element = st.booleans()
    elif kind in "iu":
        info = np.iinfo(DATATYPE_TO_DTYPE[datatype])
        element = st.integers(int(info.min) - 2, int(info.max) + 2)
    elif kind == "f":
        element = st.floats(allow_nan=False, allow_infinity=False)
    else:
        element = st.text(max_size=6)
    right = st.lists(element, min_size=count, max_size=count)
    return right | st.lists(element, max_size=count + 2) | JSON_VALUES


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    """An input tensor, plausible field by field, each field sometimes replaced by junk."""
    datatype = draw(st.sampled_from(DATATYPES) | st.text(max_size=6))
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3) | JSON_VALUES)
    count = math.prod(shape) if isinstance(shape, list) and all(
        type(d) is int and d >= 0 for d in shape
    ) else 1  # fmt: skip
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["x", "y", "input"]) | st.text(max_size=4) | JSON_VALUES),
        "datatype": datatype,
        "shape": shape,
    }
    if draw(st.booleans()):
        known = datatype if datatype in DATATYPE_TO_DTYPE else "FP32"
        tensor["data"] = draw(_tensor_data(known, min(count, 16)))
    if draw(st.integers(0, 4)) == 0:
        tensor["parameters"] = draw(JSON_VALUES)
    for key in draw(st.lists(st.sampled_from(["name", "datatype", "shape"]), max_size=1)):
        del tensor[key]
    return tensor


@st.composite
def infer_documents(draw: st.DrawFn) -> Any:
    """An infer request document: mostly the right outline, with junk in some places."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    doc: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=3) | JSON_VALUES)}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=6) | JSON_VALUES)
    if draw(st.booleans()):
        output = st.fixed_dictionaries(
            {"name": st.text(max_size=4)},
            optional={"parameters": st.fixed_dictionaries(
                {}, optional={"binary_data": st.booleans() | JSON_VALUES,
                              "classification": JSON_VALUES})},
        )  # fmt: skip
        doc["outputs"] = draw(st.lists(output, max_size=3) | JSON_VALUES)
    if draw(st.booleans()):
        doc["parameters"] = draw(
            st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans() | JSON_VALUES})
            | JSON_VALUES
        )
    return doc


def _packed(datatype: str, count: int) -> st.SearchStrategy[bytes]:
    if datatype == "BYTES":
        item = st.binary(max_size=6).map(lambda raw: struct.pack("<I", len(raw)) + raw)
        return st.lists(item, min_size=count, max_size=count).map(b"".join)
    size = count * DATATYPE_TO_DTYPE[datatype].itemsize
    return st.binary(min_size=size, max_size=size)


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A Triton binary-extension body: JSON header, raw tensors, and a header length that is
    usually right and sometimes off, negative or not a number."""
    inputs: list[dict[str, Any]] = []
    payload = b""
    for index in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
        raw = draw(_packed(datatype, math.prod(shape)) | st.binary(max_size=24))
        size: Any = draw(st.just(len(raw)) | st.integers(-4, 40) | JSON_VALUES)
        parameters = {"binary_data_size": size}
        inputs.append({"name": f"t{index}", "datatype": datatype, "shape": shape,
                       "parameters": parameters})  # fmt: skip
        payload += raw
    header = json.dumps({"inputs": inputs}).encode()
    length = draw(
        st.just(str(len(header)))
        | st.integers(-2, len(header) + len(payload) + 2).map(str)
        | st.text(max_size=6)
        | st.none()
    )
    return header + payload + draw(st.just(b"") | st.binary(max_size=8)), length


SPECS = st.lists(
    st.builds(
        TensorSpec,
        name=st.sampled_from(["x", "y", "text"]),
        datatype=st.sampled_from(DATATYPES),
        shape=st.lists(st.integers(-1, 3), min_size=1, max_size=3).map(tuple),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda spec: spec.name,
)

_CONTENT_TYPES = st.sampled_from(
    [None, "", "application/json", "text/csv", "text/plain", "application/x-npy",
     "application/json; charset=utf-8", "application/vnd+json", "TEXT/CSV"]
) | st.text(max_size=12)  # fmt: skip


@st.composite
def invocation_bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=200))
    if choice == 1:  # CSV-ish rows
        cell = st.sampled_from(["1", "-2", "3.5", "true", "0", "", "x", '"a,b"', "1e999"])
        rows = st.lists(st.lists(cell, min_size=1, max_size=4).map(",".join), max_size=4)
        return "\n".join(draw(rows)).encode()
    doc = draw(
        st.fixed_dictionaries({"instances": JSON_VALUES})
        | st.fixed_dictionaries({"inputs": JSON_VALUES})
        | st.lists(JSON_VALUES, max_size=4)
        | JSON_VALUES
    )
    return json.dumps(doc).encode()


# -- properties ------------------------------------------------------------------------------


def _checked(request: InferRequest) -> None:
    """What a decoded request promises: declared shapes and datatypes, and a lossless trip
    through the encoder and back."""
    for name, array in request.inputs.items():
        assert isinstance(name, str)
        assert array.size > 0
        if array.dtype == object:
            assert all(isinstance(item, str) for item in array.flat)
    body, header_length = encode_response("m", request, request.inputs)
    assert header_length is None or 0 < header_length <= len(body)
    echoed = json.loads(body[:header_length] if header_length else body)
    assert [o["name"] for o in echoed["outputs"]] == list(request.inputs)
    again = {o["name"]: o for o in echoed["outputs"]}
    for name, array in request.inputs.items():
        assert again[name]["shape"] == list(array.shape)
        if "data" in again[name] and array.dtype.kind == "f" and not np.isfinite(array).all():
            # JSON has no NaN or infinity (binary inputs can hold them): they travel as null.
            data = again[name]["data"]
            assert [v is None for v in data] == (~np.isfinite(array)).reshape(-1).tolist()
        elif "data" in again[name]:
            tensor = {k: again[name][k] for k in ("name", "datatype", "shape", "data")}
            redecoded = decode_request(json.dumps({"inputs": [tensor]}).encode()).inputs[name]
            np.testing.assert_array_equal(redecoded, array)
            assert redecoded.dtype == array.dtype


@fuzz(st.binary(max_size=400) | st.text(max_size=200).map(str.encode))
def test_any_bytes_decode_or_are_a_bad_request(body: bytes) -> None:
    try:
        request = decode_request(body)
    except InvalidRequest:
        return
    _checked(request)


@fuzz(infer_documents())
def test_infer_shaped_documents_decode_or_are_a_bad_request(doc: Any) -> None:
    body = json.dumps(doc).encode()
    try:
        request = decode_request(body)
    except InvalidRequest:
        return
    for raw in doc["inputs"]:
        array = request.inputs[raw["name"]]
        assert array.shape == tuple(raw["shape"])
        assert array.dtype == DATATYPE_TO_DTYPE[raw["datatype"]]
    _checked(request)


@fuzz(binary_bodies())
def test_binary_bodies_decode_or_are_a_bad_request(case: tuple[bytes, str | None]) -> None:
    body, header_length = case
    try:
        request = decode_request(body, header_length)
    except InvalidRequest:
        return
    assert header_length is not None or b"binary_data_size" not in body
    for array in request.inputs.values():
        assert array.size > 0
    _checked(request)


@fuzz(
    st.tuples(
        st.sampled_from(DATATYPES),
        st.lists(st.integers(0, 3), min_size=1, max_size=3),
        st.binary(max_size=64),
    )
)
def test_the_binary_tensor_decoder_is_exact_or_refuses(case: tuple[str, list[int], bytes]) -> None:
    datatype, shape, raw = case
    count = math.prod(shape)
    try:
        array = tensor_from_bytes("t", datatype, shape, count, memoryview(raw))
    except InvalidRequest:
        return
    assert array.shape == tuple(shape)
    if datatype != "BYTES":
        assert array.tobytes() == raw  # every byte used, none invented
        assert array.dtype.newbyteorder("=") == DATATYPE_TO_DTYPE[datatype].newbyteorder("=")


@fuzz(st.tuples(st.sampled_from(DATATYPES), JSON_VALUES))
def test_json_values_become_arrays_of_the_datatype_or_are_refused(case: tuple[str, Any]) -> None:
    datatype, data = case
    try:
        array = to_array("t", datatype, data)
    except InvalidRequest:
        return
    assert array.dtype == DATATYPE_TO_DTYPE[datatype]


@fuzz(st.tuples(invocation_bodies(), _CONTENT_TYPES, SPECS))
def test_sagemaker_bodies_decode_or_are_a_bad_request(
    case: tuple[bytes, str | None, list[TensorSpec]],
) -> None:
    body, content_type, specs = case
    try:
        tensors_ = decode_invocation(body, content_type, specs)
    except InvalidRequest:
        return
    assert set(tensors_) == {spec.name for spec in specs}
    for spec in specs:
        assert tensors_[spec.name].dtype == DATATYPE_TO_DTYPE[spec.datatype]
