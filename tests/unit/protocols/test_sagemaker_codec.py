"""SageMaker codec: JSON, CSV and text bodies onto the model's inputs; predictions back."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from tenantserve.errors import InvalidInput, InvalidRequest
from tenantserve.protocols.sagemaker.codec import (
    CSV,
    JSON,
    decode_invocation,
    encode_predictions,
    response_type,
)
from tenantserve.types import TensorSpec

FEATURES = (TensorSpec("input", "FP32", (-1, 4)),)
TEXT = (TensorSpec("text", "BYTES", (-1, 1)),)
TWO = (TensorSpec("ids", "INT64", (-1, 3)), TensorSpec("mask", "BOOL", (-1, 3)))


@pytest.mark.parametrize(
    "doc",
    [
        {"instances": [[1, 2, 3, 4], [5, 6, 7, 8.5]]},
        {"inputs": [[1, 2, 3, 4], [5, 6, 7, 8.5]]},
        [[1, 2, 3, 4], [5, 6, 7, 8.5]],
        {"instances": [{"input": [1, 2, 3, 4]}, {"input": [5, 6, 7, 8.5]}]},
        {"inputs": {"input": [[1, 2, 3, 4], [5, 6, 7, 8.5]]}},
    ],
)
def test_json_forms_feed_the_only_input(doc: Any) -> None:
    tensors = decode_invocation(orjson.dumps(doc), "application/json", FEATURES)
    assert list(tensors) == ["input"]
    assert tensors["input"].dtype == np.float32
    np.testing.assert_array_equal(tensors["input"], [[1, 2, 3, 4], [5, 6, 7, 8.5]])


def test_no_content_type_means_json() -> None:
    tensors = decode_invocation(b"[[1, 2, 3, 4]]", None, FEATURES)
    assert tensors["input"].shape == (1, 4)


def test_object_instances_feed_each_named_input() -> None:
    doc = {"instances": [{"ids": [1, 2, 3], "mask": [True, True, False]},
                         {"ids": [4, 5, 6], "mask": [True, False, False]}]}  # fmt: skip
    tensors = decode_invocation(orjson.dumps(doc), JSON, TWO)
    assert tensors["ids"].dtype == np.int64
    assert tensors["ids"].shape == (2, 3)
    assert tensors["mask"].dtype == np.bool_
    assert tensors["mask"].tolist() == [[True, True, False], [True, False, False]]


def test_plain_instances_for_a_model_with_several_inputs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="'ids', 'mask'"):
        decode_invocation(b"[[1, 2, 3]]", JSON, TWO)


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"instances": [{"ids": [1, 2, 3]}]}, "input 'mask' is missing"),
        ({"instances": [{"ids": [1, 2, 3], "mask": [1, 0, 1], "x": 1}]}, "unknown input 'x'"),
        ({"inputs": {"ids": [[1, 2, 3]]}}, "input 'mask' is missing"),
        ({"instances": [{"ids": [1, 2, 3], "mask": [1, 0, 1]}]}, "'mask': BOOL data"),
        ({"instances": [{"ids": [1, 2.5, 3], "mask": [True] * 3}]}, "'ids': INT64 data"),
    ],
)
def test_instances_that_do_not_fit_name_the_input(doc: Any, needle: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_invocation(orjson.dumps(doc), JSON, TWO)
    assert needle in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"rows": []}', b'"text"', b"[]", b'{"instances": []}', b'{"instances": 5}',
     b"[NaN]"],
)  # fmt: skip
def test_malformed_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_invocation(body, JSON, FEATURES)


def test_values_are_checked_against_the_input_datatype() -> None:
    with pytest.raises(InvalidInput, match="'input': a value is out of range for FP32"):
        decode_invocation(b"[[1e39, 0, 0, 0]]", JSON, FEATURES)
    with pytest.raises(InvalidInput, match=r"'input'.*ragged"):
        decode_invocation(b"[[1, 2, 3, 4], [1]]", JSON, FEATURES)


def test_csv_rows_become_a_2d_array() -> None:
    body = b"1,2,3,4\n5.5,6,7,nan\n\n"
    tensors = decode_invocation(body, "text/csv; charset=utf-8", FEATURES)
    assert tensors["input"].shape == (2, 4)
    assert tensors["input"][1, 0] == 5.5
    assert np.isnan(tensors["input"][1, 3])  # a missing value a CSV carries on purpose


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"1,2,3,4\n5,6\n", "row 2 has 2 values"),
        (b"1,2,x,4\n", "not a FP32"),
        (b"1,2,,4\n", "not a FP32"),
        (b"\n\n", "no rows"),
        (b"1e39,0,0,0\n", "out of range"),
    ],
)
def test_bad_csv_names_the_input(body: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_invocation(body, CSV, FEATURES)
    assert "'input'" in str(caught.value)
    assert needle in str(caught.value)


def test_csv_of_integers_and_booleans() -> None:
    ints = decode_invocation(b"1,2,3\n", CSV, (TensorSpec("ids", "INT32", (-1, 3)),))
    assert ints["ids"].dtype == np.int32
    assert ints["ids"].tolist() == [[1, 2, 3]]
    flags = decode_invocation(b"true,0,FALSE\n", CSV, (TensorSpec("f", "BOOL", (-1, 3)),))
    assert flags["f"].tolist() == [[True, False, False]]
    with pytest.raises(InvalidInput, match="'ids'"):
        decode_invocation(b"1.5,2,3\n", CSV, (TensorSpec("ids", "INT32", (-1, 3)),))


def test_csv_and_text_feed_only_single_input_models() -> None:
    with pytest.raises(InvalidInput, match="objects keyed by input name"):
        decode_invocation(b"1,2,3\n", CSV, TWO)


def test_text_lines_are_instances_of_a_string_input() -> None:
    tensors = decode_invocation("\ufeffhello\nwhat is my balance?\n".encode(), "text/plain", TEXT)
    assert tensors["text"].shape == (2, 1)  # the declared trailing axis of 1 is added
    assert tensors["text"].tolist() == [["hello"], ["what is my balance?"]]


def test_blank_text_lines_are_skipped() -> None:
    body = b"\r\nmy card is lost\r\n   \r\n\r\nrefund, please\r\n\n"
    tensors = decode_invocation(body, "text/plain; charset=utf-8", TEXT)
    assert tensors["text"].tolist() == [["my card is lost"], ["refund, please"]]


@pytest.mark.parametrize("body", [b"", b"\n", b" \r\n\t\n"])
def test_a_text_body_without_text_names_the_input(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="input 'text': the body has no text"):
        decode_invocation(body, "text/plain", TEXT)


def test_a_flat_list_of_tickets_fills_a_text_input_of_either_shape() -> None:
    body = b'{"instances": ["my card is lost", "refund, please"]}'
    as_column = decode_invocation(body, JSON, TEXT)
    assert as_column["text"].tolist() == [["my card is lost"], ["refund, please"]]
    flat = decode_invocation(body, JSON, (TensorSpec("text", "BYTES", (-1,)),))
    assert flat["text"].tolist() == ["my card is lost", "refund, please"]
    nested = decode_invocation(b'[["my card is lost"], ["refund"]]', JSON, TEXT)
    assert nested["text"].shape == (2, 1)


def test_single_column_csv_fills_a_text_input() -> None:
    body = b'my card is lost\n"refund, please"\n\n'
    assert decode_invocation(body, CSV, TEXT)["text"].tolist() == [
        ["my card is lost"],
        ["refund, please"],
    ]
    flat = decode_invocation(body, CSV, (TensorSpec("text", "BYTES", (-1,)),))
    assert flat["text"].tolist() == ["my card is lost", "refund, please"]


def test_csv_text_with_an_unquoted_comma_is_refused() -> None:
    with pytest.raises(InvalidInput, match="'text' takes one text per row; CSV row 1 has 2"):
        decode_invocation(b"refund, please\n", CSV, TEXT)


@pytest.mark.parametrize("content_type", [JSON, "text/plain", CSV])
def test_a_body_that_is_not_utf8_says_so(content_type: str) -> None:
    with pytest.raises(InvalidRequest, match="request body is not UTF-8 text"):
        decode_invocation(b'{"instances": ["caf\xe9"]}', content_type, TEXT)


def test_json_strings_fill_a_string_input() -> None:
    tensors = decode_invocation(b'{"instances": ["a", "b\\u0000c"]}', JSON, TEXT)
    assert tensors["text"].tolist() == [["a"], ["b\x00c"]]


def test_text_for_a_numeric_model_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest, match="'input' is FP32"):
        decode_invocation(b"1 2 3 4", "text/plain", FEATURES)


def test_non_utf8_text_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest, match="UTF-8"):
        decode_invocation(b"\xff\xfe", CSV, FEATURES)


@pytest.mark.parametrize("content_type", ["application/x-npy", "image/png", "multipart/form-data"])
def test_unsupported_content_types_are_bad_requests(content_type: str) -> None:
    with pytest.raises(InvalidRequest, match="unsupported Content-Type"):
        decode_invocation(b"[[1, 2, 3, 4]]", content_type, FEATURES)


# -- responses -------------------------------------------------------------------------------


def test_one_output_gives_one_value_per_row() -> None:
    body = encode_predictions({"scores": np.array([[0.5, 0.5], [1, 0]], dtype=np.float32)}, JSON)
    assert orjson.loads(body) == {"predictions": [[0.5, 0.5], [1.0, 0.0]]}


def test_several_outputs_give_an_object_per_row() -> None:
    outputs = {
        "label": np.array([b"card", "tränsfer"], dtype=object),
        "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float64),
    }
    assert orjson.loads(encode_predictions(outputs, JSON)) == {
        "predictions": [
            {"label": "card", "probabilities": [0.9, 0.1]},
            {"label": "tränsfer", "probabilities": [0.2, 0.8]},
        ]
    }


def test_outputs_without_a_shared_batch_come_back_whole() -> None:
    outputs = {"rows": np.array([1, 2, 3], dtype=np.int64), "total": np.array(6, dtype=np.int64)}
    assert orjson.loads(encode_predictions(outputs, JSON)) == {
        "predictions": {"rows": [1, 2, 3], "total": 6}
    }


def test_non_native_and_non_contiguous_outputs_serialise() -> None:
    big_endian = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=">f4")[:, 0]
    assert orjson.loads(encode_predictions({"y": big_endian}, JSON)) == {"predictions": [1.0, 3.0]}


def test_csv_answers_one_output() -> None:
    assert encode_predictions({"y": np.array([[1, 2], [3, 4]])}, CSV) == b"1,2\n3,4\n"
    assert encode_predictions({"y": np.array([b"a", "b,c"], dtype=object)}, CSV) == b'a\n"b,c"\n'
    with pytest.raises(InvalidRequest, match="one output"):
        encode_predictions({"a": np.zeros(2), "b": np.zeros(2)}, CSV)


def _ranked_outputs() -> dict[str, np.ndarray[Any, Any]]:
    return {
        "label": np.array(["refund", "card_lost"], dtype=object),
        "probabilities": np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32),
        "macros": np.array([["refund", "card_lost"], ["card_lost", "refund"]], dtype=object),
        "scores": np.array([[0.93, 0.07], [0.7, 0.3]], dtype=np.float32),
    }


def test_top_k_outputs_answer_in_macros() -> None:
    assert orjson.loads(encode_predictions(_ranked_outputs(), JSON)) == {
        "predictions": [
            {"macros": [{"macro": "refund", "score": 0.93}, {"macro": "card_lost", "score": 0.07}]},
            {"macros": [{"macro": "card_lost", "score": 0.7}, {"macro": "refund", "score": 0.3}]},
        ]
    }


def test_top_k_outputs_as_csv_pair_each_macro_with_its_score() -> None:
    assert encode_predictions(_ranked_outputs(), CSV) == (
        b"refund,0.93,card_lost,0.07\ncard_lost,0.7,refund,0.3\n"
    )


@pytest.mark.parametrize(
    ("accept", "kind"),
    [(None, JSON), ("*/*", JSON), ("application/json", JSON), ("text/csv", CSV),
     ("text/csv;q=1, application/json", CSV), ("application/vnd.api+json", JSON)],
)  # fmt: skip
def test_accept_picks_the_response_type(accept: str | None, kind: str) -> None:
    assert response_type(accept) == kind


def test_an_unsupported_accept_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest, match="Accept"):
        response_type("application/x-protobuf")


def test_a_classifiers_label_and_probabilities_come_back_per_row() -> None:
    # ONNX Runtime hands int64 outputs back as C long long, a NumPy type orjson refuses.
    labels = np.array([2, 0], dtype=np.longlong)
    scores = np.array([[0.1, 0.2, 0.7], [0.8, 0.1, 0.1]], dtype=np.float32)
    body = orjson.loads(encode_predictions({"label": labels, "probabilities": scores}, JSON))
    assert [row["label"] for row in body["predictions"]] == [2, 0]
    np.testing.assert_allclose([row["probabilities"] for row in body["predictions"]], scores)
