"""Ticket text in, the tenant's top macros out: real server, tritonclient and boto3."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from botocore.exceptions import ClientError

from fixtures.clients import sagemaker_runtime
from fixtures.macros import TOP_K, MacroStore
from fixtures.server import ThreadServer


@pytest.fixture
def server(start_server: Callable[..., ThreadServer], macro_store: MacroStore) -> ThreadServer:
    return start_server(macro_store.url)


@pytest.fixture(scope="module")
def in_process(macro_store: MacroStore) -> tuple[list[str], np.ndarray[Any, Any]]:
    """The tenant's own answers, from its ONNX file run in this process: labels, probabilities."""
    folder = macro_store.root / macro_store.model_id
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = np.array(macro_store.tickets, dtype=object).reshape(-1, 1)
    label, probabilities = session.run(["label", "probabilities"], {"text": batch})
    return [str(v) for v in label], np.asarray(probabilities)


def _sagemaker(url: str) -> Any:
    return sagemaker_runtime(url)


def _texts(values: np.ndarray[Any, Any]) -> list[list[str]]:
    return [[v.decode() if isinstance(v, bytes) else v for v in row] for row in values.tolist()]


def test_metadata_shows_the_text_input_and_the_macro_outputs(
    triton_client: triton.InferenceServerClient, macro_store: MacroStore
) -> None:
    metadata = triton_client.get_model_metadata(macro_store.model_id)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
    assert outputs["macros"] == ("BYTES", [-1, TOP_K])
    assert outputs["scores"] == ("FP32", [-1, TOP_K])


@pytest.mark.parametrize("binary", [False, True])
def test_oip_macros_match_the_model_in_process(
    triton_client: triton.InferenceServerClient,
    macro_store: MacroStore,
    in_process: tuple[list[str], np.ndarray[Any, Any]],
    binary: bool,
) -> None:
    labels, probabilities = in_process
    tickets = macro_store.tickets
    tensor = triton.InferInput("text", [len(tickets), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(tickets, dtype=object).reshape(-1, 1), binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("macros", "scores")]
    result = triton_client.infer(macro_store.model_id, [tensor], outputs=outputs)
    macros = _texts(result.as_numpy("macros"))
    scores = result.as_numpy("scores")
    assert scores.shape == (len(tickets), TOP_K)
    assert [row[0] for row in macros] == labels
    # Each row: the three best probabilities, best first, with the labels in column order.
    expected = -np.sort(-probabilities, axis=1)[:, :TOP_K]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    names = json.loads((macro_store.root / macro_store.model_id / "model.json").read_text())
    for row, ranked in enumerate(macros):
        columns = [names["labels"].index(name) for name in ranked]
        np.testing.assert_allclose(probabilities[row, columns], scores[row], rtol=1e-6)


def test_sagemaker_json_and_text_give_the_same_macros(
    server: ThreadServer,
    macro_store: MacroStore,
    in_process: tuple[list[str], np.ndarray[Any, Any]],
) -> None:
    labels, probabilities = in_process
    client = _sagemaker(server.url)
    as_json = client.invoke_endpoint(
        EndpointName="local", TargetModel=macro_store.model_id,
        ContentType="application/json", Body=json.dumps({"instances": list(macro_store.tickets)}),
    )  # fmt: skip
    # One ticket per line, with blank lines between some of them (skipped).
    lines = "\n\n".join(ticket.replace("\n", " ") for ticket in macro_store.tickets)
    as_text = client.invoke_endpoint(
        EndpointName="local", TargetModel=macro_store.model_id,
        ContentType="text/plain", Body=lines.encode(),
    )  # fmt: skip
    answers = [json.loads(r["Body"].read())["predictions"] for r in (as_json, as_text)]
    assert answers[0] == answers[1]
    predictions = answers[0]
    assert len(predictions) == len(macro_store.tickets)
    assert [p["macros"][0]["macro"] for p in predictions] == labels
    for prediction, row in zip(predictions, probabilities, strict=True):
        assert len(prediction["macros"]) == TOP_K
        assert prediction["macros"][0]["score"] == pytest.approx(float(row.max()), rel=1e-6)
        ranked = [macro["score"] for macro in prediction["macros"]]
        assert ranked == sorted(ranked, reverse=True)


def test_sagemaker_bad_text_is_a_validation_error(
    server: ThreadServer, macro_store: MacroStore
) -> None:
    client = _sagemaker(server.url)
    for body, needle in ((b"\n  \n", "no text"), (b"caf\xe9 card\n", "not UTF-8")):
        with pytest.raises(ClientError) as caught:
            client.invoke_endpoint(
                EndpointName="local", TargetModel=macro_store.model_id,
                ContentType="text/plain", Body=body,
            )  # fmt: skip
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert needle in caught.value.response["Error"]["Message"]


def test_a_step_that_does_not_fit_fails_the_load_and_names_why(
    server: ThreadServer, macro_store: MacroStore
) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["hi"]}]}
    response = httpx.post(f"{server.url}/v2/models/{macro_store.broken_id}/infer", json=body)
    assert response.status_code == 500
    assert "but the manifest has" in response.json()["error"]
