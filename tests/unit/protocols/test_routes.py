"""The routes in-process over httpx.ASGITransport, against a fake InferenceService."""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.types import Message

from fixtures.fake_call import FakeCall
from tenantserve.errors import (
    InsufficientMemory,
    InvalidInput,
    ModelAlreadyLoaded,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PredictFailed,
    TenantLimitExceeded,
)
from tenantserve.metrics import Metrics
from tenantserve.protocols import routes
from tenantserve.reports import RepositoryEntry
from tenantserve.service import InferenceService
from tenantserve.store.versions import choose_unversioned
from tenantserve.types import (
    ModelId,
    ModelMetadata,
    ModelRef,
    ModelStatus,
    ResolvedModel,
    Tensors,
    TensorSpec,
)

MAX_BODY = 64 * 1024
STORE = "s3://models/prod"


class FakeService:
    """The InferenceService methods the routes call; records every call it gets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.resident_ids = ["acme/macros"]
        self.accepting = True
        self.fail: Exception | None = None
        self.inputs = (TensorSpec("input", "FP32", (-1, 4)),)
        self.ranked = False
        self.refuse: Exception | None = None

    def _call(self, method: str, model_id: ModelId) -> None:
        self.calls.append((method, model_id.value))
        if self.fail is not None:
            raise self.fail

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.accepting

    def call(self, target: ModelRef | ResolvedModel) -> FakeCall:
        async def run(model_id: ModelId, tensors: Tensors) -> Tensors:
            self._call("infer", model_id)
            return self.model(tensors)

        return FakeCall(
            target, resolve=self.resolve, inputs=self.inputs, run=run, metadata=self.metadata,
            admit=self._admit, hit=self.is_resident,
        )  # fmt: skip

    def _admit(self) -> None:
        if self.refuse is not None:  # as the real call does, before the body is read
            raise self.refuse

    def model(self, tensors: Tensors) -> Tensors:
        if self.ranked:
            # A top-k text model: ranks two macros by the length of each ticket.
            texts = next(iter(tensors.values())).reshape(-1)
            longer = np.array([len(text) > 10 for text in texts])
            macros = np.where(longer[:, None], ["refund", "card_lost"], ["card_lost", "refund"])
            scores = np.tile(np.array([0.75, 0.25], np.float32), (len(texts), 1))
            return {"label": macros[:, 0], "macros": macros.astype(object), "scores": scores}
        x = next(iter(tensors.values()))
        return {"sum": np.asarray(x, dtype=np.float32).sum(axis=-1), "first": x[..., 0]}

    async def metadata(self, model_id: ModelId) -> ModelMetadata:
        self._call("metadata", model_id)
        outputs = (TensorSpec("sum", "FP32", (-1,)), TensorSpec("first", "FP32", (-1,)))
        return ModelMetadata(model_id.value, "onnxruntime_onnx", self.inputs, outputs)

    def is_resident(self, model_id: ModelId) -> bool:
        # A read with no effect: not recorded, so call lists show only what acts.
        return model_id.value in self.resident_ids

    async def load(
        self, model_id: ModelId, *, pin: bool = False, exist_ok: bool = True, reload: bool = False
    ) -> None:
        self._call("load", model_id)
        if not exist_ok and model_id.value in self.resident_ids:
            raise ModelAlreadyLoaded(f"model {model_id} is already loaded")
        self.resident_ids.append(model_id.value)

    async def unload(self, model_id: ModelId) -> None:
        self._call("unload", model_id)
        if model_id.value not in self.resident_ids:
            raise ModelNotFound(f"model {model_id} is not loaded")
        self.resident_ids.remove(model_id.value)

    def resident(self) -> list[ModelStatus]:
        return [ModelStatus(i, "ready", 1000, False, 0, 1, 0.0, 0.1) for i in self.resident_ids]

    def status_of(self, model_id: ModelId) -> ModelStatus:
        self._call("status_of", model_id)
        for status in self.resident():
            if status.model_id == model_id.value:
                return status
        raise ModelNotFound(f"model {model_id} is not loaded")

    async def resolve(self, ref: ModelRef, *, fresh: bool = False) -> ResolvedModel:
        return choose_unversioned(ref.model_id, ref.selector)  # no versioned models here

    async def versions_of(self, model: ResolvedModel) -> list[str]:
        return [model.version]

    async def index(self) -> list[RepositoryEntry]:
        return [RepositoryEntry("acme/macros", "READY"), RepositoryEntry("beta/m", "UNAVAILABLE")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
def app(service: FakeService, metrics: Metrics) -> Starlette:
    built = routes(
        cast(InferenceService, service), metrics, max_body_bytes=MAX_BODY, store_url=STORE
    )
    return Starlette(routes=built)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


def _infer_body(rows: list[list[float]], **extra: Any) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [len(rows), 4], "data": rows}
    return orjson.dumps({"inputs": [tensor], **extra})


def _count(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def raw_status(
    app: Starlette, method: str, raw_path: str, headers: Sequence[tuple[str, str]] = ()
) -> int:
    """Send a path exactly as given (httpx would normalise ``..`` away); return the status."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": _infer_body([[1, 2, 3, 4]]), "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1), "root_path": "",
        # As uvicorn does: ``path`` is the percent-decoded ``raw_path``.
        "path": urllib.parse.unquote(raw_path), "raw_path": raw_path.encode("latin-1"),
        "query_string": b"",
        "headers": [(b"host", b"test"), *((k.encode(), v.encode("latin-1")) for k, v in headers)],
    }  # fmt: skip
    await app(scope, receive, send)
    return int(sent[0]["status"])


# -- OIP: health, metadata, readiness ---------------------------------------------------------


@pytest.mark.anyio
async def test_health_and_server_metadata(client: httpx.AsyncClient, service: FakeService) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    server = (await client.get("/v2")).json()
    assert server["name"] == "tenantserve"
    assert {"model_repository", "binary_tensor_data"} <= set(server["extensions"])
    service.accepting = False
    not_ready = await client.get("/v2/health/ready")
    assert not_ready.status_code == 503
    assert int(not_ready.headers["Retry-After"]) >= 1


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v2/models/acme/macros", "/v2/models/acme/macros/versions/1"])
async def test_model_metadata(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.json() == {
        "name": "acme/macros",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "sum", "datatype": "FP32", "shape": [-1]},
            {"name": "first", "datatype": "FP32", "shape": [-1]},
        ],
    }


@pytest.mark.anyio
async def test_model_ready_is_200_only_when_resident(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/models/acme/macros/ready")).status_code == 200
    assert (await client.get("/v2/models/acme/macros/versions/1/ready")).status_code == 200
    cold = await client.get("/v2/models/acme/other/ready")
    assert cold.status_code == 400  # what tritonclient and KServe read as "not ready"
    assert cold.json()["ready"] is False


@pytest.mark.anyio
async def test_an_unknown_version_is_not_found(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    assert (await client.post("/v2/models/acme/macros/versions/7/infer")).status_code == 404
    assert service.calls == []


# -- OIP: infer -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_json_infer(
    client: httpx.AsyncClient, service: FakeService, metrics: Metrics
) -> None:
    body = _infer_body([[1, 2, 3, 4], [5, 6, 7, 8]], id="r-1")
    response = await client.post("/v2/models/acme/macros/infer", content=body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["model_name"] == "acme/macros"
    assert doc["id"] == "r-1"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["sum"] == {"name": "sum", "datatype": "FP32", "shape": [2], "data": [10, 26]}
    assert service.calls == [("infer", "acme/macros")]
    labels = {"protocol": "oip", "code": "200"}
    assert _count(metrics, "tenantserve_invocations_total", labels) == 1
    assert _count(metrics, "tenantserve_request_seconds_count", {"protocol": "oip"}) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v2/models/acme/macros/infer", {}),
        ("/invocations", {"X-Amzn-SageMaker-Target-Model": "acme/macros"}),
    ],
)
async def test_a_refused_request_is_answered_before_its_body_is_read(
    client: httpx.AsyncClient, service: FakeService, path: str, headers: dict[str, str]
) -> None:
    # The body is not even JSON: a 429 (not a 400) shows it was never read or decoded.
    service.refuse = TenantLimitExceeded("tenant acme is over its rate", retry_after_s=2.0)
    response = await client.post(path, content=b"{not json", headers=headers)
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "2"
    assert service.calls == []


@pytest.mark.anyio
async def test_requested_outputs_are_passed_on(client: httpx.AsyncClient) -> None:
    body = _infer_body([[1, 2, 3, 4]], outputs=[{"name": "first"}])
    doc = (await client.post("/v2/models/acme/macros/infer", content=body)).json()
    assert [o["name"] for o in doc["outputs"]] == ["first"]


@pytest.mark.anyio
async def test_binary_infer_as_tritonclient_sends_it(client: httpx.AsyncClient) -> None:
    x = triton.InferInput("input", [2, 4], "FP32")
    x.set_data_from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4), binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body([x])
    # tritonclient sends no Content-Type at all.
    response = await client.post(
        "/v2/models/acme/macros/versions/1/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
    assert response.status_code == 200, response.text
    assert "content-type" not in {k.lower() for k in dict(response.request.headers)}
    length = int(response.headers["Inference-Header-Content-Length"])
    result = triton.InferenceServerClient.parse_response_body(
        response.content, header_length=length
    )
    np.testing.assert_array_equal(result.as_numpy("sum"), [6, 22])


@pytest.mark.anyio
@pytest.mark.parametrize("content_type", ["text/csv", "multipart/form-data; boundary=x"])
async def test_infer_with_a_wrong_content_type_is_400(
    client: httpx.AsyncClient, service: FakeService, content_type: str
) -> None:
    response = await client.post(
        "/v2/models/acme/macros/infer",
        content=_infer_body([[1, 2, 3, 4]]),
        headers={"content-type": content_type},
    )
    assert response.status_code == 400
    assert "Content-Type" in response.json()["error"]
    assert service.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("body", [b"", b"{", b'{"inputs": [{"name": "input"', b"\x00\x01"])
async def test_malformed_infer_bodies_are_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/v2/models/acme/macros/infer", content=body)
    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.anyio
async def test_an_oversized_body_is_413_before_the_service(
    client: httpx.AsyncClient, service: FakeService, metrics: Metrics
) -> None:
    response = await client.post("/v2/models/acme/macros/infer", content=b" " * (MAX_BODY + 1))
    assert response.status_code == 413
    assert service.calls == []
    assert _count(metrics, "tenantserve_invocations_total", {"protocol": "oip", "code": "413"}) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "status", "retry"),
    [
        (ModelNotReady("still loading", retry_after_s=2), 503, "2"),
        (Overloaded("too busy"), 503, "1"),
        (InsufficientMemory("model needs more than the budget"), 507, None),
        (ModelNotFound("no model acme/macros"), 404, None),
        (InvalidInput("input 'input': wrong shape"), 400, None),
        (PredictFailed("model raised"), 500, None),
        (RuntimeError("/var/secret/path leaked"), 500, None),
    ],
)
async def test_service_errors_map_to_statuses(
    client: httpx.AsyncClient,
    service: FakeService,
    metrics: Metrics,
    error: Exception,
    status: int,
    retry: str | None,
) -> None:
    service.fail = error
    response = await client.post("/v2/models/acme/macros/infer", content=_infer_body([[1] * 4]))
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry
    assert "/var/secret" not in response.text
    assert set(response.json()) == {"error"}
    labels = {"protocol": "oip", "code": str(status)}
    assert _count(metrics, "tenantserve_invocations_total", labels) == 1


# -- OIP: repository --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_repository_index_and_ready_filter(client: httpx.AsyncClient) -> None:
    everything = (await client.post("/v2/repository/index")).json()
    assert everything == [
        {"name": "acme/macros", "version": "1", "state": "READY", "reason": ""},
        {"name": "beta/m", "version": "1", "state": "UNAVAILABLE", "reason": ""},
    ]
    ready = (await client.post("/v2/repository/index", json={"ready": True})).json()
    assert [e["name"] for e in ready] == ["acme/macros"]
    assert (await client.post("/v2/repository/index", content=b"[1]")).status_code == 400


@pytest.mark.anyio
async def test_repository_load_and_unload(client: httpx.AsyncClient, service: FakeService) -> None:
    assert (await client.post("/v2/repository/models/beta/m/load")).status_code == 200
    assert "beta/m" in service.resident_ids
    assert (await client.post("/v2/repository/models/beta/m/unload")).status_code == 200
    assert "beta/m" not in service.resident_ids
    assert (await client.post("/v2/repository/models/beta/m/unload")).status_code == 404
    assert (await client.post("/v2/repository/models/beta/m/reload")).status_code == 404


# -- model ids: refused before the service is called (RELIABILITY 8) -------------------------

# Triton's traversal list and friends, as they would appear in a URL path.
BAD_IDS = [
    "../etc", "a/../b", "/etc/passwd", "model/..", " ..", "..", ".", "%2e%2e%2f", "%2e%2e/etc",
    "a%2f..%2f..%2fb", "a\\b", "..\\..\\windows", "a%00b", "%00", "", "%20", " ", "acme//m",
    "acme/m/", ".hidden", "a\tb", "x" * 300,
]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("POST", "/v2/models/{}/infer"),
        ("GET", "/v2/models/{}"),
        ("GET", "/v2/models/{}/ready"),
        ("POST", "/v2/models/{}/versions/1/infer"),
        ("POST", "/v2/repository/models/{}/load"),
        ("POST", "/v2/repository/models/{}/unload"),
        ("GET", "/models/{}"),
        ("DELETE", "/models/{}"),
        ("POST", "/models/{}/invoke"),
    ],
)
async def test_bad_ids_in_paths_never_reach_the_service(
    app: Starlette, service: FakeService, bad: str, method: str, template: str
) -> None:
    status = await raw_status(app, method, template.format(bad))
    assert status in (400, 404)
    assert service.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("bad", [urllib.parse.unquote(b) for b in BAD_IDS])
@pytest.mark.parametrize("header", ["X-Amzn-SageMaker-Target-Model", "X-Amzn-Target-Model"])
async def test_bad_ids_in_the_target_model_header_never_reach_the_service(
    app: Starlette, service: FakeService, bad: str, header: str
) -> None:
    status = await raw_status(app, "POST", "/invocations", [(header, bad)])
    assert status == 400
    assert service.calls == []


@pytest.mark.anyio
async def test_a_bad_load_body_name_never_reaches_the_service(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    for bad in ["../etc", "a/../b", "/etc/passwd", "", "a\\b", "a\x00b"]:
        response = await client.post("/models", json={"model_name": bad, "url": bad})
        assert response.status_code == 400, bad
    assert service.calls == []


# -- SageMaker runtime ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/invocations", "/endpoints/my-endpoint/invocations"])
@pytest.mark.parametrize("header", ["X-Amzn-SageMaker-Target-Model", "X-Amzn-Target-Model"])
async def test_invocations(
    client: httpx.AsyncClient, service: FakeService, metrics: Metrics, path: str, header: str
) -> None:
    response = await client.post(
        path,
        content=b'{"instances": [[1, 2, 3, 4], [0, 0, 0, 1]]}',
        headers={header: "acme/macros", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "predictions": [{"sum": 10.0, "first": 1.0}, {"sum": 1.0, "first": 0.0}]
    }
    # One call, one lease: the body is decoded against the signature of the leased model.
    assert service.calls == [("infer", "acme/macros")]
    labels = {"protocol": "sagemaker", "code": "200"}
    assert _count(metrics, "tenantserve_invocations_total", labels) == 1


@pytest.mark.anyio
async def test_invocation_with_csv_in_and_out(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/invocations",
        content=b"1,2,3,4\n",
        headers={
            "X-Amzn-SageMaker-Target-Model": "acme/macros",
            "content-type": "text/csv",
            "accept": "application/json",
        },
    )
    assert response.json() == {"predictions": [{"sum": 10.0, "first": 1.0}]}


RANKED = {
    "predictions": [
        {"macros": [{"macro": "refund", "score": 0.75}, {"macro": "card_lost", "score": 0.25}]},
        {"macros": [{"macro": "card_lost", "score": 0.75}, {"macro": "refund", "score": 0.25}]},
    ]
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"instances": ["I lost my card yesterday", "refund"]}'),
        ("application/json", b'{"instances": [["I lost my card yesterday"], ["refund"]]}'),
        ("text/plain", b"I lost my card yesterday\n\n  \nrefund\n"),
        ("text/csv", b'"I lost my card yesterday"\nrefund\n'),
    ],
)
async def test_tickets_get_their_macros(
    client: httpx.AsyncClient, service: FakeService, content_type: str, body: bytes
) -> None:
    service.ranked = True
    service.inputs = (TensorSpec("text", "BYTES", (-1, 1)),)
    response = await client.post(
        "/invocations",
        content=body,
        headers={"X-Amzn-SageMaker-Target-Model": "acme/macros", "content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json() == RANKED


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content_type", "body", "needle"),
    [
        ("text/plain", b"\n \n", "input 'text': the body has no text"),
        ("text/plain", b"caf\xe9\n", "request body is not UTF-8 text"),
        ("application/json", b'["caf\xe9"]', "request body is not UTF-8 text"),
    ],
)
async def test_tickets_without_text_are_400(
    client: httpx.AsyncClient, service: FakeService, content_type: str, body: bytes, needle: str
) -> None:
    service.ranked = True
    service.inputs = (TensorSpec("text", "BYTES", (-1, 1)),)
    response = await client.post(
        "/invocations",
        content=body,
        headers={"X-Amzn-SageMaker-Target-Model": "acme/macros", "content-type": content_type},
    )
    assert response.status_code == 400
    assert needle in response.json()["message"]


@pytest.mark.anyio
async def test_a_missing_target_model_is_400(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    response = await client.post("/invocations", content=b"[[1, 2, 3, 4]]")
    assert response.status_code == 400
    assert response.headers["x-amzn-ErrorType"] == "ValidationError"
    assert "X-Amzn-SageMaker-Target-Model" in response.json()["error"]
    assert service.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ModelNotReady("still loading", retry_after_s=3), 429, "ModelNotReadyException"),
        (Overloaded("busy"), 503, "ServiceUnavailable"),
        (PredictFailed("model raised"), 424, "ModelError"),
        (InsufficientMemory("too big"), 507, "InsufficientMemory"),
    ],
)
async def test_sagemaker_errors_carry_the_boto3_error_type(
    client: httpx.AsyncClient, service: FakeService, error: Exception, status: int, code: str
) -> None:
    service.fail = error
    response = await client.post(
        "/invocations", content=b"[[1, 2, 3, 4]]", headers={"X-Amzn-Target-Model": "acme/macros"}
    )
    assert response.status_code == status
    assert response.headers["x-amzn-ErrorType"] == code
    assert response.json()["message"] == str(error)
    if status in (429, 503):
        assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.anyio
async def test_an_oversized_invocation_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/invocations",
        content=b"[" + b"1," * MAX_BODY + b"1]",
        headers={"X-Amzn-SageMaker-Target-Model": "acme/macros"},
    )
    assert response.status_code == 413


# -- SageMaker container API (BYOC multi-model) ----------------------------------------------


@pytest.mark.anyio
async def test_ping(client: httpx.AsyncClient, service: FakeService) -> None:
    assert (await client.get("/ping")).status_code == 200
    service.accepting = False
    response = await client.get("/ping")
    assert response.status_code == 503
    assert "Retry-After" in response.headers


@pytest.mark.anyio
@pytest.mark.parametrize("url", ["beta/m", f"{STORE}/beta/m"])
async def test_load_accepts_the_id_or_a_store_path(
    client: httpx.AsyncClient, service: FakeService, url: str
) -> None:
    response = await client.post("/models", json={"model_name": "beta/m", "url": url})
    assert response.status_code == 200, response.text
    assert response.json() == {"modelName": "beta/m", "modelUrl": f"{STORE}/beta/m"}
    assert ("load", "beta/m") in service.calls


@pytest.mark.anyio
async def test_load_accepts_where_sagemaker_unpacked_the_model(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    # A multi-model endpoint sends {"model_name": N, "url": "/opt/ml/models/N/model"}.
    response = await client.post(
        "/models", json={"model_name": "b4e1", "url": f"{STORE}/b4e1/model"}
    )
    assert response.status_code == 200, response.text
    assert ("load", "b4e1") in service.calls
    for url in (f"{STORE}/b4e1/other", f"{STORE}/b4e1/model/x", "b4e1/model", f"{STORE}/c/model"):
        refused = await client.post("/models", json={"model_name": "b4e1", "url": url})
        assert refused.status_code == 400, url


@pytest.mark.anyio
async def test_invocations_without_a_header_go_to_the_default_model(
    service: FakeService, metrics: Metrics
) -> None:
    built = routes(
        cast(InferenceService, service), metrics, max_body_bytes=MAX_BODY, default_model="model"
    )
    transport = httpx.ASGITransport(app=Starlette(routes=built))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.post("/invocations", content=b"[[1, 2, 3, 4]]")
        assert response.status_code == 200, response.text
        named = await http.post(
            "/invocations", content=b"[[1]]", headers={"X-Amzn-SageMaker-Target-Model": "acme/m"}
        )
        assert named.status_code == 200, named.text
    assert [call for call in service.calls if call[0] == "infer"] == [
        ("infer", "model"), ("infer", "acme/m")
    ]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "s3://other-bucket/beta/m",
        f"{STORE}/../beta/m",
        f"{STORE}//beta/m",
        f"{STORE}beta/m",
        f"{STORE}/beta/../beta/m",
        "../beta/m",
        "/beta/m",
        "beta/other",
        "",
    ],
)
async def test_load_refuses_locations_outside_the_store(
    client: httpx.AsyncClient, service: FakeService, url: str
) -> None:
    response = await client.post("/models", json={"model_name": "beta/m", "url": url})
    assert response.status_code == 400
    assert "169.254" not in response.text
    assert "passwd" not in response.text
    assert service.calls == []


@pytest.mark.anyio
async def test_load_twice_is_409_and_no_memory_is_507(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    twice = await client.post("/models", json={"model_name": "acme/macros", "url": "acme/macros"})
    assert twice.status_code == 409
    service.fail = InsufficientMemory("no room")
    full = await client.post("/models", json={"model_name": "beta/m", "url": "beta/m"})
    assert full.status_code == 507


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body", [b"", b"[]", b'{"model_name": "a"}', b'{"model_name": 1, "url": "a"}']
)
async def test_load_needs_a_name_and_url(client: httpx.AsyncClient, body: bytes) -> None:
    assert (await client.post("/models", content=body)).status_code == 400


@pytest.mark.anyio
async def test_list_models_pages(client: httpx.AsyncClient, service: FakeService) -> None:
    service.resident_ids = ["e/5", "a/1", "c/3", "b/2", "d/4"]
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"next_page_token": token} if token else {})}
        doc = (await client.get("/models", params=params)).json()
        seen += [m["modelName"] for m in doc["models"]]
        assert all(m["modelUrl"] == f"{STORE}/{m['modelName']}" for m in doc["models"])
        pages += 1
        token = doc["nextPageToken"]
        if token is None:
            break
    assert seen == ["a/1", "b/2", "c/3", "d/4", "e/5"]
    assert pages == 3
    everything = (await client.get("/models")).json()
    assert len(everything["models"]) == 5
    assert everything["nextPageToken"] is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=-1", "limit=1001", "limit=x", "next_page_token=%%%", "next_page_token=Li4"],
)
async def test_list_models_refuses_bad_paging(client: httpx.AsyncClient, query: str) -> None:
    assert (await client.get(f"/models?{query}")).status_code == 400


@pytest.mark.anyio
async def test_describe_and_delete(client: httpx.AsyncClient, service: FakeService) -> None:
    described = await client.get("/models/acme/macros")
    assert described.status_code == 200
    assert described.json()["modelName"] == "acme/macros"
    assert described.json()["modelUrl"] == f"{STORE}/acme/macros"
    assert (await client.get("/models/acme/unknown")).status_code == 404
    assert (await client.delete("/models/acme/unknown")).status_code == 404
    assert (await client.delete("/models/acme/macros")).status_code == 200
    assert service.resident_ids == []


@pytest.mark.anyio
async def test_invoke_by_path(client: httpx.AsyncClient, service: FakeService) -> None:
    response = await client.post("/models/acme/macros/invoke", content=b"[[1, 1, 1, 1]]")
    assert response.json() == {"predictions": [{"sum": 4.0, "first": 1.0}]}
    assert (await client.post("/models/acme/macros", content=b"[]")).status_code == 404


# -- metrics and the OpenAPI document ---------------------------------------------------------


@pytest.mark.anyio
async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.post("/v2/models/acme/macros/infer", content=_infer_body([[1, 2, 3, 4]]))
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'tenantserve_invocations_total{code="200",protocol="oip"} 1.0' in response.text


@pytest.mark.anyio
async def test_openapi_document_lists_our_routes(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path in [
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v2/repository/models/{model_name}/load",
        "/invocations",
        "/endpoints/{endpoint_name}/invocations",
        "/models",
        "/models/{model_name}/invoke",
        "/metrics",
    ]:
        assert path in paths, path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/InferRequest"
    }
    assert "Retry-After" in infer["responses"]["503"]["headers"]
    # Every $ref resolves.
    schemas = doc["components"]["schemas"]
    refs = [r.rsplit("/", 1)[1] for r in _refs(doc)]
    assert refs
    assert all(name in schemas for name in refs)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []
