"""Native scikit-learn, XGBoost and LightGBM artifacts served from a store over OIP (tritonclient)
and SageMaker (boto3): converted on first load, predictions equal to the framework's own."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from botocore.exceptions import ClientError

from fixtures.clients import sagemaker_runtime
from fixtures.native_models import NativeModel, write_native_store
from fixtures.s3 import S3Server
from fixtures.server import ThreadServer, free_port


@pytest.fixture(scope="module")
def native_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, NativeModel]]:
    root = tmp_path_factory.mktemp("native-store")
    return root, write_native_store(root)


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One disk tier for the module's servers (one after another): each model converts once."""
    return tmp_path_factory.mktemp("disk-tier")


@pytest.fixture
def server(
    start_server: Callable[..., ThreadServer],
    native_store: tuple[Path, dict[str, NativeModel]],
    kept: Path,
) -> ThreadServer:
    return start_server(native_store[0], cache_dir=kept)


def _assert_equal(got: dict[str, Any], model: NativeModel) -> None:
    assert set(got) == set(model.expected)
    for name, want in model.expected.items():
        if name == "label":
            np.testing.assert_array_equal(np.asarray(got[name]), want)
        else:
            np.testing.assert_allclose(
                np.asarray(got[name], dtype=np.float32), want, rtol=1e-5, atol=model.atol
            )


def test_every_framework_over_oip_equals_the_original(
    server: ThreadServer, native_store: tuple[Path, dict[str, NativeModel]]
) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        for model_id, model in native_store[1].items():
            metadata = client.get_model_metadata(model_id)
            assert metadata["inputs"] == [
                {"name": "input", "datatype": "FP32", "shape": [-1, model.rows.shape[1]]}
            ]
            assert {o["name"] for o in metadata["outputs"]} == set(model.expected)
            tensor = triton.InferInput("input", list(model.rows.shape), "FP32")
            tensor.set_data_from_numpy(model.rows, binary_data=True)
            result = client.infer(model_id, [tensor])
            _assert_equal({name: result.as_numpy(name) for name in model.expected}, model)
    finally:
        client.close()


def test_every_framework_over_sagemaker_json_and_csv(
    server: ThreadServer, native_store: tuple[Path, dict[str, NativeModel]]
) -> None:
    runtime = sagemaker_runtime(server.url)
    for model_id, model in native_store[1].items():
        as_json = runtime.invoke_endpoint(
            EndpointName="local",
            TargetModel=model_id,
            ContentType="application/json",
            Body=json.dumps({"instances": model.rows.tolist()}),
        )
        predictions = json.loads(as_json["Body"].read())["predictions"]
        if "predictions" in model.expected:  # a regressor: one number per row
            _assert_equal({"predictions": predictions}, model)
        else:  # a classifier: {"label": …, "probabilities": […]} per row
            got = {name: [row[name] for row in predictions] for name in model.expected}
            _assert_equal(got, model)
        # CSV, as the SageMaker XGBoost and scikit-learn containers take it.
        as_csv = runtime.invoke_endpoint(
            EndpointName="local",
            TargetModel=model_id,
            ContentType="text/csv",
            Body="\n".join(",".join(repr(float(v)) for v in row) for row in model.rows),
        )
        assert json.loads(as_csv["Body"].read())["predictions"] == predictions


def test_a_conversion_is_made_once_and_kept_in_the_disk_tier(
    start_server: Callable[..., ThreadServer],
    native_store: tuple[Path, dict[str, NativeModel]],
    tmp_path: Path,
) -> None:
    cache = tmp_path / "tier"
    server = start_server(native_store[0], cache_dir=cache)
    assert httpx.post(f"{server.url}/v2/repository/models/xgb/cancer/load").status_code == 200
    reports = list(cache.rglob("conversion.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["framework"] == "XGBoost"
    assert report["kind"] == "classifier"
    assert report["max_difference"] <= 1e-5
    assert (reports[0].parent / "model.onnx").is_file()
    made = reports[0].stat().st_mtime_ns
    # A reload takes the kept file: nothing is converted again.
    assert httpx.post(f"{server.url}/v2/repository/models/xgb/cancer/unload").status_code == 200
    assert httpx.post(f"{server.url}/v2/repository/models/xgb/cancer/load").status_code == 200
    assert [p.stat().st_mtime_ns for p in cache.rglob("conversion.json")] == [made]


def test_a_missing_extra_is_named_and_other_models_still_serve(
    start_server: Callable[..., ThreadServer],
    native_store: tuple[Path, dict[str, NativeModel]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on a server installed without tenantserve[xgboost]: the framework cannot be imported.
    monkeypatch.setitem(sys.modules, "xgboost", None)
    monkeypatch.delitem(sys.modules, "tenantserve.convert.xgboost_booster", raising=False)
    server = start_server(native_store[0])
    rows = native_store[1]["xgb/cancer"].rows
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}]}  # fmt: skip
    refused = httpx.post(f"{server.url}/v2/models/xgb/cancer/infer", json=body)
    assert refused.status_code == 501
    assert "tenantserve[xgboost]" in refused.json()["error"]
    with pytest.raises(ClientError) as caught:
        sagemaker_runtime(server.url).invoke_endpoint(
            EndpointName="local",
            TargetModel="xgb/cancer",
            ContentType="application/json",
            Body=json.dumps({"instances": rows.tolist()}),
        )
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert "tenantserve[xgboost]" in caught.value.response["Error"]["Message"]
    # LightGBM's and scikit-learn's models are served all the same.
    for model_id in ("lgb/iris", "sk/iris-pipeline"):
        model = native_store[1][model_id]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(model.rows.shape),
                            "data": model.rows.ravel().tolist()}]}  # fmt: skip
        served = httpx.post(f"{server.url}/v2/models/{model_id}/infer", json=body)
        assert served.status_code == 200, served.text


@pytest.mark.s3
def test_native_artifacts_serve_from_s3_as_folders_and_archives(
    s3_env: S3Server,
    native_store: tuple[Path, dict[str, NativeModel]],
    start_server: Callable[..., ThreadServer],
) -> None:
    root, models = native_store
    bucket = s3_env.create_bucket()
    s3_env.upload_tree(root / "lgb", bucket, "fleet/lgb")
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w:gz") as tar:
        for name in ("xgboost.json", "sample.csv"):
            tar.add(root / "xgb" / "diabetes" / name, arcname=name)
    s3_env.put_bytes(bucket, "fleet/xgb/diabetes.tar.gz", packed.getvalue())
    server = start_server(f"s3://{bucket}/fleet")
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        for model_id, stored in [
            ("lgb/iris", "lgb/iris"),
            ("lgb/diabetes", "lgb/diabetes"),
            ("xgb/diabetes.tar.gz", "xgb/diabetes"),
        ]:
            model = models[stored]
            tensor = triton.InferInput("input", list(model.rows.shape), "FP32")
            tensor.set_data_from_numpy(model.rows)
            result = client.infer(model_id, [tensor])
            _assert_equal({name: result.as_numpy(name) for name in model.expected}, model)
    finally:
        client.close()


def test_a_mixed_fleet_serves_from_one_store(
    start_server: Callable[..., ThreadServer], tmp_path: Path
) -> None:
    from tenantserve.tools.fleet.publish import open_publisher
    from tenantserve.tools.fleet.synth_publish import synth_fleet

    store = tmp_path / "mixed"
    written = synth_fleet(
        models=4, size_bytes=20_000, seed=1, publisher=open_publisher(str(store)), kind="mixed"
    )
    assert [kind for _, _, kind in written] == ["onnx", "sklearn", "xgboost", "lightgbm"]
    server = start_server(store)
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    rows = np.random.default_rng(5).normal(size=(6, 16)).astype(np.float32)
    try:
        for model_id, _, kind in written:
            tensor = triton.InferInput("input", [6, 16], "FP32")
            tensor.set_data_from_numpy(rows)
            result = client.infer(model_id, [tensor])
            if kind == "onnx":
                assert result.as_numpy("output").shape == (6, 4)
                continue
            probabilities = result.as_numpy("probabilities")
            assert probabilities.shape == (6, 4)
            np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
            np.testing.assert_array_equal(result.as_numpy("label"), probabilities.argmax(axis=1))
    finally:
        client.close()


def test_native_models_over_oip_grpc_and_a_missing_extra_is_unimplemented(
    start_server: Callable[..., ThreadServer],
    native_store: tuple[Path, dict[str, NativeModel]],
    kept: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    monkeypatch.setitem(sys.modules, "lightgbm", None)  # a server without tenantserve[lightgbm]
    port = free_port()
    start_server(native_store[0], grpc_port=port, cache_dir=kept)
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        for model_id in ("sk/cancer-forest", "xgb/iris-ubj", "xgb/diabetes"):
            model = native_store[1][model_id]
            tensor = tgrpc.InferInput("input", list(model.rows.shape), "FP32")
            tensor.set_data_from_numpy(model.rows)
            result = client.infer(model_id, [tensor])
            _assert_equal({name: result.as_numpy(name) for name in model.expected}, model)
        rows = native_store[1]["lgb/iris"].rows
        tensor = tgrpc.InferInput("input", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("lgb/iris", [tensor])
        assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "tenantserve[lightgbm]" in caught.value.message()
    finally:
        client.close()
