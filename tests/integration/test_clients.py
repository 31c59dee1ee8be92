"""Real clients on the real server: tritonclient.http and boto3 (RELIABILITY 37-39)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from fixtures.clients import sagemaker_runtime
from fixtures.models import ModelStoreDir, TextStore
from fixtures.server import ThreadServer

N_FEATURES = 16


@pytest.fixture
def server(
    start_server: Callable[..., ThreadServer], synthetic_store: ModelStoreDir
) -> ThreadServer:
    return start_server(synthetic_store.url)


def _sagemaker(url: str, **retries: Any) -> Any:
    return sagemaker_runtime(url, retries=retries or None)


def _batch() -> np.ndarray[Any, Any]:
    return np.linspace(-1, 1, 3 * N_FEATURES, dtype=np.float32).reshape(3, N_FEATURES)


def _triton_infer(
    client: triton.InferenceServerClient, model_id: str, *, binary: bool
) -> np.ndarray[Any, Any]:
    tensor = triton.InferInput("input", [3, N_FEATURES], "FP32")
    tensor.set_data_from_numpy(_batch(), binary_data=binary)
    outputs = [triton.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer(model_id, [tensor], outputs=outputs)
    array: np.ndarray[Any, Any] = result.as_numpy("output")
    return array


def test_tritonclient_health_metadata_and_repository(
    triton_client: triton.InferenceServerClient, synthetic_store: ModelStoreDir
) -> None:
    model_id = synthetic_store.model_ids[0]
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    server = triton_client.get_server_metadata()
    assert server["name"] == "tenantserve"
    assert "binary_tensor_data" in server["extensions"]

    assert not triton_client.is_model_ready(model_id)
    triton_client.load_model(model_id)
    assert triton_client.is_model_ready(model_id)
    metadata = triton_client.get_model_metadata(model_id)
    assert metadata["name"] == model_id
    assert [i["name"] for i in metadata["inputs"]] == ["input"]
    assert metadata["inputs"][0]["datatype"] == "FP32"

    index = {e["name"]: e["state"] for e in triton_client.get_model_repository_index()}
    assert set(synthetic_store.model_ids) <= set(index)
    assert index[model_id] == "READY"

    triton_client.unload_model(model_id)
    assert not triton_client.is_model_ready(model_id)


def test_tritonclient_json_binary_and_raw_http_agree(
    triton_client: triton.InferenceServerClient,
    server: ThreadServer,
    synthetic_store: ModelStoreDir,
) -> None:
    model_id = synthetic_store.model_ids[1]
    as_json = _triton_infer(triton_client, model_id, binary=False)
    as_binary = _triton_infer(triton_client, model_id, binary=True)
    assert as_json.shape == (3, 4)
    np.testing.assert_allclose(as_json, as_binary, rtol=1e-6)
    # With no outputs named, tritonclient asks for every output in binary form.
    tensor = triton.InferInput("input", [3, N_FEATURES], "FP32")
    tensor.set_data_from_numpy(_batch())
    np.testing.assert_allclose(
        triton_client.infer(model_id, [tensor]).as_numpy("output"), as_json, rtol=1e-6
    )
    # A plain HTTP client (curl-like) gets the same numbers.
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, N_FEATURES],
                        "data": _batch().tolist()}]}  # fmt: skip
    raw = httpx.post(f"{server.url}/v2/models/{model_id}/infer", json=body, timeout=60)
    assert raw.status_code == 200, raw.text
    data = np.array(raw.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(data, as_json, rtol=1e-6)


def test_tritonclient_errors_carry_the_status(
    triton_client: triton.InferenceServerClient, synthetic_store: ModelStoreDir
) -> None:
    wrong = triton.InferInput("input", [1, 3], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        triton_client.infer(synthetic_store.model_ids[0], [wrong])
    assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException) as missing:
        triton_client.get_model_metadata("tenant-000/no-such-model")
    assert missing.value.status() == "404"
    with pytest.raises(InferenceServerException) as bad:
        triton_client.get_model_metadata("tenant-000/..%2f..%2fetc")
    assert bad.value.status() in ("400", "404")


def test_boto3_invoke_endpoint_matches_tritonclient(
    server: ThreadServer,
    triton_client: triton.InferenceServerClient,
    synthetic_store: ModelStoreDir,
) -> None:
    model_id = synthetic_store.model_ids[2]
    expected = _triton_infer(triton_client, model_id, binary=True)
    response = _sagemaker(server.url).invoke_endpoint(
        EndpointName="local",
        TargetModel=model_id,
        ContentType="application/json",
        Accept="application/json",
        Body=json.dumps({"instances": _batch().tolist()}),
    )
    assert response["ContentType"] == "application/json"
    predictions = json.loads(response["Body"].read())["predictions"]
    np.testing.assert_allclose(np.array(predictions, dtype=np.float32), expected, rtol=1e-6)
    csv = _sagemaker(server.url).invoke_endpoint(
        EndpointName="local",
        TargetModel=model_id,
        ContentType="text/csv",
        Body="\n".join(",".join(str(v) for v in row) for row in _batch().tolist()),
    )
    from_csv = json.loads(csv["Body"].read())["predictions"]
    np.testing.assert_allclose(np.array(from_csv, dtype=np.float32), expected, rtol=1e-6)


def test_boto3_errors_raise_the_modelled_exceptions(
    server: ThreadServer, synthetic_store: ModelStoreDir
) -> None:
    client = _sagemaker(server.url)
    with pytest.raises(client.exceptions.ValidationError):
        client.invoke_endpoint(
            EndpointName="local",
            TargetModel=synthetic_store.model_ids[0],
            ContentType="application/json",
            Body=b'{"instances": [[1, 2, 3]]}',
        )
    with pytest.raises(client.exceptions.ValidationError):
        client.invoke_endpoint(EndpointName="local", TargetModel="../etc/passwd", Body=b"[[1]]")


def test_boto3_sees_model_not_ready_while_a_model_loads(
    start_server: Callable[..., ThreadServer], synthetic_store: ModelStoreDir
) -> None:
    # A wait limit far shorter than any load: the first call must answer "still loading".
    server = start_server(synthetic_store.url, load_wait_s=1e-6)
    client = _sagemaker(server.url)
    body = json.dumps({"instances": _batch().tolist()})
    with pytest.raises(client.exceptions.ModelNotReadyException) as caught:
        client.invoke_endpoint(
            EndpointName="local", TargetModel=synthetic_store.model_ids[3], Body=body
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert int(caught.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"]) >= 1


def test_sagemaker_container_api(server: ThreadServer, synthetic_store: ModelStoreDir) -> None:
    model_id = synthetic_store.model_ids[4]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.get("/ping").status_code == 200
        loaded = http.post("/models", json={"model_name": model_id, "url": model_id})
        assert loaded.status_code == 200, loaded.text
        again = http.post("/models", json={"model_name": model_id, "url": model_id})
        assert again.status_code == 409
        evil = http.post("/models", json={"model_name": model_id, "url": "file:///etc/passwd"})
        assert evil.status_code == 400
        listed = http.get("/models", params={"limit": 1}).json()
        assert len(listed["models"]) == 1
        assert listed["nextPageToken"] is None or isinstance(listed["nextPageToken"], str)
        assert http.get(f"/models/{model_id}").json()["modelName"] == model_id
        invoked = http.post(f"/models/{model_id}/invoke", json={"instances": _batch().tolist()})
        assert invoked.status_code == 200
        assert len(invoked.json()["predictions"]) == 3
        assert http.delete(f"/models/{model_id}").status_code == 200
        assert http.delete(f"/models/{model_id}").status_code == 404
        metrics = http.get("/metrics").text
        assert 'tenantserve_invocations_total{code="200",protocol="sagemaker"}' in metrics


TEXTS = ["I lost my card, please freeze it", "how long does a transfer take? \u00e9t\u00e9"]


def test_string_models_agree_across_clients(
    start_server: Callable[..., ThreadServer],
    text_store: TextStore,
) -> None:
    server = start_server(text_store.url)
    model_id = text_store.model_ids[0]
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        labels = []
        for binary in (False, True):
            tensor = triton.InferInput("text", [len(TEXTS), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[t] for t in TEXTS], dtype=object), binary)
            outputs = [triton.InferRequestedOutput("label", binary_data=binary)]
            result = client.infer(model_id, [tensor], outputs=outputs).as_numpy("label")
            labels.append([v.decode() if isinstance(v, bytes) else v for v in result.tolist()])
    finally:
        client.close()
    assert labels[0] == labels[1]
    sagemaker = _sagemaker(server.url)
    as_text = sagemaker.invoke_endpoint(
        EndpointName="local", TargetModel=model_id, ContentType="text/plain",
        Body="\n".join(TEXTS).encode(),
    )  # fmt: skip
    as_json = sagemaker.invoke_endpoint(
        EndpointName="local", TargetModel=model_id, ContentType="application/json",
        Body=json.dumps({"instances": TEXTS}),
    )  # fmt: skip
    for response in (as_text, as_json):
        predictions = json.loads(response["Body"].read())["predictions"]
        assert [p["label"] for p in predictions] == labels[0]
