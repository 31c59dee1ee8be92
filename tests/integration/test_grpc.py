"""OIP v2 over gRPC on the real server: the unchanged tritonclient.grpc beside tritonclient.http."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from fixtures.models import TextStore, heavy_model, make_model
from fixtures.oip import write_int64_model
from fixtures.polling import until
from fixtures.server import ProcessServer, ThreadServer, free_port

DENSE, OTHER, IDS, HEAVY, LIGHT = (
    "acme/dense",
    "beta/dense",
    "acme/ids",
    "slow/heavy",
    "quick/light",
)
ACME_KEY = "acme-invoke-key-000001"
OPS_KEY = "ops-manage-key-0000001"
HEAVY_ROWS = 8192  # about 20 s of one core: long enough to give up on while it runs


@pytest.fixture(scope="module")
def grpc_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpc-store")
    make_model(root / DENSE, size_bytes=200_000, seed=1)
    make_model(root / OTHER, size_bytes=200_000, seed=2)
    make_model(root / LIGHT, size_bytes=100_000, seed=3)
    write_int64_model(root / IDS)
    heavy_model(root / HEAVY)
    return root


@dataclass
class Clients:
    """One server's two OIP faces, through tritonclient's two clients."""

    server: ThreadServer
    grpc_address: str
    grpc: tgrpc.InferenceServerClient
    http: thttp.InferenceServerClient

    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        """tritonclient's own generated stub, for what its client does not send (typed data)."""
        return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.grpc_address))


@pytest.fixture
def serve(start_server: Callable[..., ThreadServer]) -> Iterator[Callable[..., Clients]]:
    opened: list[Clients] = []

    def start(store: str | Path, **settings: Any) -> Clients:
        port = free_port()
        server = start_server(store, grpc_port=port, **settings)
        address = f"127.0.0.1:{port}"
        clients = Clients(
            server, address, tgrpc.InferenceServerClient(address),
            thttp.InferenceServerClient(server.url.removeprefix("http://")),
        )  # fmt: skip
        opened.append(clients)
        return clients

    yield start
    for clients in opened:
        clients.grpc.close()
        clients.http.close()


def _batch() -> np.ndarray[Any, Any]:
    return np.linspace(-1, 1, 3 * 16, dtype=np.float32).reshape(3, 16)


def _grpc_infer(client: tgrpc.InferenceServerClient, model: str, name: str, array: Any,
                datatype: str, **options: Any) -> tgrpc.InferResult:  # fmt: skip
    tensor = tgrpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor], **options)


def _http_infer(client: thttp.InferenceServerClient, model: str, name: str, array: Any,
                datatype: str, *, binary: bool = True) -> thttp.InferResult:  # fmt: skip
    tensor = thttp.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return client.infer(model, [tensor])


def _typed(model: str, name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(
        name=name, datatype=datatype, shape=shape,
        contents=service_pb2.InferTensorContents(**contents),
    )  # fmt: skip
    return request


def _refusal(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_health_metadata_and_repository(serve: Callable[..., Clients], grpc_store: Path) -> None:
    clients = serve(grpc_store)
    client = clients.grpc
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert (metadata.name, metadata.version) == (
        "tenantserve",
        clients.http.get_server_metadata()["version"],
    )
    assert list(metadata.extensions) == ["model_repository"]

    assert not client.is_model_ready(DENSE)
    client.load_model(DENSE)
    assert client.is_model_ready(DENSE)
    metadata = client.get_model_metadata(DENSE, as_json=True)
    assert metadata["name"] == DENSE
    assert metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("input", "FP32", ["-1", "16"])  # MessageToJson writes int64 as strings
    ]
    index = {
        m["name"]: m["state"] for m in client.get_model_repository_index(as_json=True)["models"]
    }
    assert index[DENSE] == "READY"
    assert index[IDS] == "UNAVAILABLE"
    client.unload_model(DENSE)
    assert not client.is_model_ready(DENSE)


def test_fp32_raw_and_typed_equal_http(serve: Callable[..., Clients], grpc_store: Path) -> None:
    clients = serve(grpc_store)
    batch = _batch()
    raw = _grpc_infer(clients.grpc, DENSE, "input", batch, "FP32", request_id="r-7")
    assert raw.get_response().id == "r-7"
    from_grpc = raw.as_numpy("output")
    assert from_grpc.shape == (3, 4)
    np.testing.assert_array_equal(from_grpc, _http_infer(clients.http, DENSE, "input", batch,
                                  "FP32").as_numpy("output"))  # fmt: skip
    np.testing.assert_array_equal(from_grpc, _http_infer(clients.http, DENSE, "input", batch,
                                  "FP32", binary=False).as_numpy("output"))  # fmt: skip

    typed = _typed(DENSE, "input", "FP32", [3, 16], fp32_contents=batch.reshape(-1).tolist())
    answer, call = clients.stub().ModelInfer.with_call(typed, timeout=60)
    assert not answer.raw_output_contents  # typed in, typed out
    np.testing.assert_array_equal(
        np.array(answer.outputs[0].contents.fp32_contents, np.float32).reshape(3, 4), from_grpc
    )
    assert ("x-tenantserve-cache", "hit") in call.trailing_metadata()


def test_int64_raw_and_typed(serve: Callable[..., Clients], grpc_store: Path) -> None:
    clients = serve(grpc_store)
    ids = np.array([[2**40, -5, 7, 2**33], [1, 2, 3, 4]], dtype=np.int64)
    raw = _grpc_infer(clients.grpc, IDS, "ids", ids, "INT64")
    np.testing.assert_array_equal(raw.as_numpy("doubled"), ids * 2)
    np.testing.assert_array_equal(raw.as_numpy("total"), (ids * 2).sum(axis=1, keepdims=True))
    over_http = _http_infer(clients.http, IDS, "ids", ids, "INT64", binary=False)
    np.testing.assert_array_equal(raw.as_numpy("total"), over_http.as_numpy("total"))

    typed = _typed(IDS, "ids", "INT64", [2, 4], int64_contents=ids.reshape(-1).tolist())
    typed.outputs.add(name="total")
    answer = clients.stub().ModelInfer(typed, timeout=60)
    assert [o.name for o in answer.outputs] == ["total"]
    assert list(answer.outputs[0].contents.int64_contents) == (ids * 2).sum(axis=1).tolist()


TEXTS = ["I lost my card, please freeze it", "how long does a transfer take? \u00e9t\u00e9"]


def test_bytes_raw_and_typed_equal_http(
    serve: Callable[..., Clients], text_store: TextStore
) -> None:
    clients = serve(text_store.url)
    model = text_store.model_ids[0]
    texts = np.array([[t] for t in TEXTS], dtype=object)
    raw = _grpc_infer(clients.grpc, model, "text", texts, "BYTES")
    labels = [v.decode() for v in raw.as_numpy("label").tolist()]
    http_labels = _http_infer(clients.http, model, "text", texts, "BYTES").as_numpy("label")
    assert labels == [v.decode() if isinstance(v, bytes) else v for v in http_labels.tolist()]

    typed = _typed(model, "text", "BYTES", [2, 1], bytes_contents=[t.encode() for t in TEXTS])
    typed.outputs.add(name="label")
    answer = clients.stub().ModelInfer(typed, timeout=60)
    assert [v.decode() for v in answer.outputs[0].contents.bytes_contents] == labels


def test_errors_carry_http_s_messages(serve: Callable[..., Clients], grpc_store: Path) -> None:
    clients = serve(grpc_store)
    wrong = np.zeros((1, 3), np.float32)
    over_grpc = _refusal(lambda: _grpc_infer(clients.grpc, DENSE, "input", wrong, "FP32"))
    over_http = _refusal(lambda: _http_infer(clients.http, DENSE, "input", wrong, "FP32"))
    assert (over_grpc.status(), over_http.status()) == ("StatusCode.INVALID_ARGUMENT", "400")
    assert over_grpc.message() == over_http.message()

    missing = "acme/no-such-model"
    gone = _refusal(lambda: clients.grpc.get_model_metadata(missing))
    assert gone.status() == "StatusCode.NOT_FOUND"
    assert gone.message() == _refusal(lambda: clients.http.get_model_metadata(missing)).message()
    version = _refusal(lambda: clients.grpc.get_model_metadata(DENSE, model_version="2"))
    assert version.message() == (
        f"model {DENSE} has no version 2: it has no numbered version folders, so it serves "
        "version 1 only"
    )
    invalid = _refusal(lambda: clients.grpc.is_model_ready("acme/../etc"))
    assert invalid.status() == "StatusCode.INVALID_ARGUMENT"


def test_keys_scopes_and_roles(
    serve: Callable[..., Clients], grpc_store: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "acme"\nkey = "{ACME_KEY}"\nscopes = ["acme/*"]\n\n'
        f'[[keys]]\nname = "ops"\nkey = "{OPS_KEY}"\nscopes = ["*"]\nroles = ["manage"]\n'
    )
    clients = serve(grpc_store, api_keys=keys)
    client, batch = clients.grpc, _batch()
    acme = {"authorization": f"Bearer {ACME_KEY}"}
    served = _grpc_infer(client, DENSE, "input", batch, "FP32", headers=acme)
    assert served.as_numpy("output").shape == (3, 4)
    via_x_api_key = _grpc_infer(
        client, DENSE, "input", batch, "FP32", headers={"x-api-key": ACME_KEY}
    )
    np.testing.assert_array_equal(via_x_api_key.as_numpy("output"), served.as_numpy("output"))

    with httpx.Client(base_url=clients.server.url, timeout=30) as http:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 16],
                            "data": batch.reshape(-1).tolist()}]}  # fmt: skip
        other_http = http.post(f"/v2/models/{OTHER}/infer", json=body, headers=acme)
        none_http = http.post(f"/v2/models/{DENSE}/infer", json=body)
    other = _refusal(lambda: _grpc_infer(client, OTHER, "input", batch, "FP32", headers=acme))
    assert (other.status(), other_http.status_code) == ("StatusCode.PERMISSION_DENIED", 403)
    assert other.message() == other_http.json()["error"]
    none = _refusal(lambda: _grpc_infer(client, DENSE, "input", batch, "FP32"))
    assert (none.status(), none_http.status_code) == ("StatusCode.UNAUTHENTICATED", 401)
    assert none.message() == none_http.json()["error"]

    manage = _refusal(lambda: client.load_model(DENSE, headers=acme))
    assert manage.status() == "StatusCode.PERMISSION_DENIED"
    assert manage.message() == "this key does not have the 'manage' role"
    client.load_model(DENSE, headers={"authorization": f"Bearer {OPS_KEY}"})
    assert client.is_model_ready(DENSE, headers=acme)
    assert client.is_server_ready()  # health stays open, as on HTTP


def _value(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_a_deadline_that_passes_frees_the_server(
    serve: Callable[..., Clients], grpc_store: Path
) -> None:
    clients = serve(grpc_store, threads=1, preload=(HEAVY, LIGHT))
    rows = np.linspace(-1, 1, HEAVY_ROWS * 16, dtype=np.float32).reshape(HEAVY_ROWS, 16)
    in_flight = "tenantserve_requests_in_flight"
    late = _refusal(lambda: _grpc_infer(clients.grpc, HEAVY, "input", rows, "FP32",
                                        client_timeout=0.5))  # fmt: skip
    assert late.status() == "StatusCode.DEADLINE_EXCEEDED"
    # The run was told to stop: the one predict thread serves the next call at once, not
    # after the seconds the heavy run would have taken.
    until(lambda: _value(clients.server.url, in_flight) == 0, timeout_s=5)
    started = time.monotonic()
    _grpc_infer(clients.grpc, LIGHT, "input", _batch(), "FP32", client_timeout=30)
    assert time.monotonic() - started < 10  # far below the heavy run's 20 s, busy or not
    codes = ("DEADLINE_EXCEEDED", "CANCELLED")  # whichever of the two ends reached it first
    counted = [
        _value(clients.server.url, "tenantserve_invocations_total", protocol="grpc", code=code)
        for code in codes
    ]
    assert sum(counted) == 1


def test_a_cancelled_call_frees_its_slot(serve: Callable[..., Clients], grpc_store: Path) -> None:
    clients = serve(grpc_store, threads=1, preload=(HEAVY,))
    rows = np.linspace(-1, 1, HEAVY_ROWS * 16, dtype=np.float32).reshape(HEAVY_ROWS, 16)
    tensor = tgrpc.InferInput("input", [HEAVY_ROWS, 16], "FP32")
    tensor.set_data_from_numpy(rows)
    done: list[object] = []
    call = clients.grpc.async_infer(HEAVY, [tensor], callback=lambda *result: done.append(result))
    in_flight = "tenantserve_requests_in_flight"
    until(lambda: _value(clients.server.url, in_flight) == 1)
    call.cancel()
    until(lambda: _value(clients.server.url, in_flight) == 0, timeout_s=5)
    until(lambda: _value(clients.server.url, "tenantserve_invocations_total", protocol="grpc",
                         code="CANCELLED") == 1)  # fmt: skip


def test_serve_takes_grpc_port(
    start_process: Callable[..., ProcessServer], grpc_store: Path
) -> None:
    port = free_port()
    server = start_process(grpc_store, "--grpc-port", str(port))
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_ready()
        result = _grpc_infer(client, LIGHT, "input", _batch(), "FP32")
        assert result.as_numpy("output").shape == (3, 4)
    finally:
        client.close()
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once down
    log = server.log_path.read_text()
    assert f"OIP gRPC service listening on 127.0.0.1:{port}" in log
    assert "Application shutdown complete" in log
