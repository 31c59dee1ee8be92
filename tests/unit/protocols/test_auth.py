"""Keys, scopes and roles on every route (in-process), SigV4 checks, and disconnect handling."""

from __future__ import annotations

import asyncio
import datetime
import logging
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.types import Message

from fixtures.fake_call import FakeCall
from tenantserve.metrics import Metrics
from tenantserve.protocols import routes
from tenantserve.protocols.auth import Access
from tenantserve.protocols.keys import KeyRing, Principal, Role
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

ACME_INVOKE = "acme-invoke-key-0001"
ACME_MANAGE = "acme-manage-key-0001"
OPS = "ops-manage-key-000001"
AWS_ID, AWS_SECRET = "AKIAACME0001", "acme-aws-secret-0000000001"
KEYS = {
    "keys": [
        {"name": "acme-app", "key": ACME_INVOKE, "scopes": ["acme/*", "common/*"]},
        {"name": "acme-ops", "key": ACME_MANAGE, "scopes": ["acme/*"],
         "roles": ["invoke", "manage"]},
        {"name": "ops", "key": OPS, "scopes": ["*"], "roles": ["manage", "metrics"]},
        {"name": "acme-boto", "aws_access_key_id": AWS_ID, "aws_secret_access_key": AWS_SECRET,
         "scopes": ["acme/*"]},
    ]
}  # fmt: skip
INFER_BODY = orjson.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
)


class FakeService:
    """What the routes call; records the model ids that reach it."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.models = ["acme/m", "globex/m", "common/m"]
        self.hold: asyncio.Event | None = None
        self.cancelled = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    async def _run(self, model_id: ModelId) -> Tensors:
        self.seen.append(model_id.value)
        if self.hold is not None:
            try:
                await self.hold.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return {"output": np.ones((1, 1), np.float32)}

    def call(self, target: ModelRef | ResolvedModel) -> FakeCall:
        async def run(model_id: ModelId, tensors: Tensors) -> Tensors:
            return await self._run(model_id)

        spec = (TensorSpec("input", "FP32", (-1, 4)),)
        return FakeCall(target, resolve=self.resolve, inputs=spec, run=run, metadata=self.metadata)

    async def metadata(self, model_id: ModelId) -> ModelMetadata:
        self.seen.append(model_id.value)
        spec = (TensorSpec("input", "FP32", (-1, 4)),)
        return ModelMetadata(model_id.value, "onnxruntime_onnx", spec, spec)

    def is_resident(self, model_id: ModelId) -> bool:
        return model_id.value in self.models

    async def load(self, model_id: ModelId, *, exist_ok: bool = True, **_: Any) -> None:
        self.seen.append(model_id.value)

    async def unload(self, model_id: ModelId) -> None:
        self.seen.append(model_id.value)

    def pin(self, model_id: ModelId, pinned: bool = True) -> None:
        self.seen.append(model_id.value)

    def resident(self) -> list[ModelStatus]:
        return [ModelStatus(m, "ready", 1, False, 0, 1, 0.0, 0.1) for m in self.models]

    def status_of(self, model_id: ModelId) -> ModelStatus:
        self.seen.append(model_id.value)
        return ModelStatus(model_id.value, "ready", 1, False, 0, 1, 0.0, 0.1)

    async def promote(self, model_id: ModelId, version: int, alias: str) -> ResolvedModel:
        self.seen.append(model_id.value)
        return ResolvedModel(model_id, str(version), ModelId.parse(f"{model_id}/{version}"))

    async def resolve(self, ref: ModelRef, *, fresh: bool = False) -> ResolvedModel:
        return choose_unversioned(ref.model_id, ref.selector)  # no versioned models here

    async def versions_of(self, model: ResolvedModel) -> list[str]:
        return [model.version]

    async def index(self) -> list[RepositoryEntry]:
        return [RepositoryEntry(m, "READY") for m in self.models]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def app(service: FakeService) -> Starlette:
    access = Access(KeyRing.from_document(KEYS, where="test"), max_body_bytes=1 << 20)
    built = routes(
        cast(InferenceService, service), Metrics(CollectorRegistry()), max_body_bytes=1 << 20,
        access=access,
    )  # fmt: skip
    return Starlette(routes=built)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


Call = tuple[str, str, dict[str, str], bytes]


def _calls(model: str) -> dict[str, tuple[Role, Call]]:
    """Every route that names a model, with the role it needs, for ``model`` as spelled in a
    URL path (headers and bodies carry it percent-decoded, as a client would send it)."""
    plain = urllib.parse.unquote(model)
    header = {"X-Amzn-SageMaker-Target-Model": plain, "Content-Type": "application/json"}
    load = orjson.dumps({"model_name": plain, "url": plain})
    return {
        "oip metadata": (Role.INVOKE, ("GET", f"/v2/models/{model}", {}, b"")),
        "oip ready": (Role.INVOKE, ("GET", f"/v2/models/{model}/ready", {}, b"")),
        "oip infer": (Role.INVOKE, ("POST", f"/v2/models/{model}/infer", {}, INFER_BODY)),
        "oip load": (Role.MANAGE, ("POST", f"/v2/repository/models/{model}/load", {}, b"")),
        "oip unload": (Role.MANAGE, ("POST", f"/v2/repository/models/{model}/unload", {}, b"")),
        "sm invocations": (Role.INVOKE, ("POST", "/invocations", header, b"[[1,2,3,4]]")),
        "sm endpoint": (Role.INVOKE, ("POST", "/endpoints/e/invocations", header, b"[[1,2,3,4]]")),
        "sm invoke": (Role.INVOKE, ("POST", f"/models/{model}/invoke", header, b"[[1,2,3,4]]")),
        "sm load": (Role.MANAGE, ("POST", "/models", {}, load)),
        "sm describe": (Role.MANAGE, ("GET", f"/models/{model}", {}, b"")),
        "sm unload": (Role.MANAGE, ("DELETE", f"/models/{model}", {}, b"")),
        "v1 pin": (Role.MANAGE, ("POST", f"/v1/models/{model}/pin", {}, b"")),
        "v1 promote": (Role.MANAGE, ("POST", f"/v1/models/{model}/promote", {}, b'{"version": 1}')),
    }


async def _send(client: httpx.AsyncClient, call: Call, key: str | None) -> httpx.Response:
    method, path, headers, body = call
    sent = dict(headers)
    if key is not None:
        sent["X-Api-Key"] = key
    return await client.request(method, path, headers=sent, content=body)


ROUTES = sorted(_calls("acme/m"))


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("key", [None, "not-a-key", ACME_INVOKE + "x", ""])
async def test_missing_or_wrong_key_is_401_everywhere(
    client: httpx.AsyncClient, service: FakeService, route: str, key: str | None
) -> None:
    _, call = _calls("acme/m")[route]
    response = await _send(client, call, key)
    assert response.status_code == 401
    assert "error" in response.json()
    assert ACME_INVOKE not in response.text
    if call[1].startswith("/v2"):
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert service.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(
    "model", ["globex/m", "globex%2Fm", "Acme/m", "acme-corp/m", "globex/acme/m", "acmex/m"]
)
async def test_other_tenants_models_are_403_by_any_spelling(
    client: httpx.AsyncClient, service: FakeService, route: str, model: str
) -> None:
    role, call = _calls(model)[route]
    key = ACME_INVOKE if role is Role.INVOKE else ACME_MANAGE
    response = await _send(client, call, key)
    assert response.status_code == 403, response.text
    assert service.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("route", ROUTES)
async def test_each_route_needs_its_role(
    client: httpx.AsyncClient, service: FakeService, route: str
) -> None:
    role, call = _calls("acme/m")[route]
    allowed, lacking = (ACME_INVOKE, OPS) if role is Role.INVOKE else (ACME_MANAGE, ACME_INVOKE)
    refused = await _send(client, call, lacking)
    assert refused.status_code == 403
    assert service.seen == []
    response = await _send(client, call, allowed)
    assert response.status_code not in (401, 403), response.text
    assert service.seen in ([], ["acme/m"])  # ready and SageMaker load answer without a call


@pytest.mark.anyio
async def test_bearer_header_and_traversal_spelling(client: httpx.AsyncClient) -> None:
    auth = {"Authorization": f"Bearer {ACME_INVOKE}"}
    assert (await client.get("/v2/models/acme/m", headers=auth)).status_code == 200
    assert (await client.get("/v2/models/common/m", headers=auth)).status_code == 200
    sneaky = await client.get("/v2/models/acme%2F..%2Fglobex%2Fm", headers=auth)
    assert sneaky.status_code == 400


@pytest.mark.anyio
async def test_listings_show_only_the_keys_scope(client: httpx.AsyncClient) -> None:
    mine = {"X-Api-Key": ACME_MANAGE}
    index = (await client.post("/v2/repository/index", headers=mine)).json()
    assert [entry["name"] for entry in index] == ["acme/m"]
    listed = (await client.get("/models", headers=mine)).json()["models"]
    assert [m["modelName"] for m in listed] == ["acme/m"]
    everything = (await client.get("/models", headers={"X-Api-Key": OPS})).json()["models"]
    assert len(everything) == 3


@pytest.mark.anyio
async def test_the_status_document_needs_manage_and_every_tenant(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v1/status")).status_code == 401
    scoped = await client.get("/v1/status", headers={"X-Api-Key": ACME_MANAGE})
    assert scoped.status_code == 403  # it would list other tenants' models
    assert (await client.get("/v1/status", headers={"X-Api-Key": ACME_INVOKE})).status_code == 403
    unpin = await client.post("/v1/models/globex/m/unpin", headers={"X-Api-Key": ACME_MANAGE})
    assert unpin.status_code == 403


@pytest.mark.anyio
async def test_health_is_open_and_metrics_needs_its_role(client: httpx.AsyncClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/v2"):
        assert (await client.get(path)).status_code == 200
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"X-Api-Key": ACME_INVOKE})).status_code == 403
    assert (await client.get("/metrics", headers={"X-Api-Key": OPS})).status_code == 200


def _signed(
    body: bytes, model: str, *, secret: str = AWS_SECRET, when: datetime.datetime | None = None
) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url="http://test/endpoints/e/invocations", data=body,
        headers={"Content-Type": "application/json", "X-Amzn-SageMaker-Target-Model": model},
    )  # fmt: skip
    signer = SigV4Auth(Credentials(AWS_ID, secret), "sagemaker", "eu-west-1")
    if when is None:
        signer.add_auth(request)
    else:
        timestamp = when.strftime("%Y%m%dT%H%M%SZ")
        request.context["timestamp"] = timestamp
        request.headers["X-Amz-Date"] = timestamp
        signature = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        request.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
            f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, "
            f"Signature={signature}"
        )
    return dict(request.headers.items())


@pytest.mark.anyio
async def test_sigv4_signed_requests_are_checked(
    client: httpx.AsyncClient, service: FakeService
) -> None:
    body = b"[[1,2,3,4]]"
    url = "/endpoints/e/invocations"
    ok = await client.post(url, content=body, headers=_signed(body, "acme/m"))
    assert ok.status_code == 200, ok.text
    assert service.seen == ["acme/m"]
    tampered = await client.post(url, content=b"[[9,9,9,9]]", headers=_signed(body, "acme/m"))
    assert tampered.status_code == 401
    wrong = await client.post(url, content=body, headers=_signed(body, "acme/m", secret="x" * 20))
    assert wrong.status_code == 401
    assert wrong.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    stale = await client.post(url, content=body, headers=_signed(body, "acme/m", when=old))
    assert stale.status_code == 401
    other = await client.post(url, content=body, headers=_signed(body, "globex/m"))
    assert other.status_code == 403
    assert other.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert service.seen == ["acme/m"]


@pytest.mark.anyio
async def test_a_sigv4_date_that_is_no_date_is_401_naming_it(
    client: httpx.AsyncClient, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    scope = f"{AWS_ID}/20241399/eu-west-1/sagemaker/aws4_request"
    headers = {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, "
        f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
        "X-Amz-Date": "20241399T120000Z",
        "X-Amzn-SageMaker-Target-Model": "acme/m",
    }
    with caplog.at_level(logging.WARNING):
        response = await client.post("/endpoints/e/invocations", content=b"[[1]]", headers=headers)
    assert response.status_code == 401, response.text
    assert "X-Amz-Date is not a valid date" in response.json()["message"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert service.seen == []


def test_scopes_end_at_a_segment_boundary() -> None:
    principal = Principal("p", ("acme/*", "common/shared"), frozenset({Role.INVOKE}))
    assert principal.covers(ModelId.parse("acme/m"))
    assert principal.covers(ModelId.parse("acme/team/m"))
    assert principal.covers(ModelId.parse("common/shared"))
    for outside in ("acme-corp/m", "acme", "common/shared2", "globex/acme/m", "ACME/m"):
        assert not principal.covers(ModelId.parse(outside))


def test_key_files_in_toml_and_json_keep_only_digests(tmp_path: Path) -> None:
    toml = tmp_path / "keys.toml"
    toml.write_text(
        '[[keys]]\nname = "a"\nkey = "' + ACME_INVOKE + '"\nscopes = ["acme/*"]\n'
        '[[keys]]\nname = "b"\nkey_sha256 = "' + "ab" * 32 + '"\nscopes = ["*"]\n'
        'roles = ["manage"]\n'
    )
    ring = KeyRing.load(toml)
    principal = ring.find(ACME_INVOKE)
    assert principal is not None
    assert principal.name == "a"
    assert ring.find("acme-invoke-key-0002") is None
    assert ACME_INVOKE not in repr(ring)
    assert ACME_INVOKE not in repr(principal)
    json_file = tmp_path / "keys.json"
    json_file.write_text(orjson.dumps(KEYS).decode())
    assert len(KeyRing.load(json_file)) == 4


@pytest.mark.parametrize(
    "entry",
    [
        {"key": "short", "scopes": ["acme/*"]},
        {"key": ACME_INVOKE, "scopes": []},
        {"key": ACME_INVOKE, "scopes": ["../etc/*"]},
        {"key": ACME_INVOKE, "scopes": ["acme/*"], "roles": ["root"]},
        {"key": ACME_INVOKE, "key_sha256": "00" * 32, "scopes": ["acme/*"]},
        {"scopes": ["acme/*"]},
        {"key": ACME_INVOKE, "scopes": ["acme/*"], "aws_access_key_id": "AKIA1"},
        {"key": ACME_INVOKE, "scopes": ["acme/*"], "colour": "red"},
    ],
)
def test_malformed_keys_are_refused_without_echoing_them(entry: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="keys") as refused:
        KeyRing.from_document({"keys": [entry]}, where="keys.toml")
    assert ACME_INVOKE not in str(refused.value)


@pytest.mark.anyio
async def test_a_client_that_disconnects_cancels_its_inference(
    app: Starlette, service: FakeService
) -> None:
    service.hold = asyncio.Event()
    gone = asyncio.Event()
    sent: list[Message] = []
    messages: Sequence[Message] = [{"type": "http.request", "body": INFER_BODY, "more_body": False}]
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1), "root_path": "",
        "path": "/v2/models/acme/m/infer", "raw_path": b"/v2/models/acme/m/infer",
        "query_string": b"", "headers": [(b"host", b"test"), (b"x-api-key", ACME_INVOKE.encode())],
    }  # fmt: skip
    handling = asyncio.ensure_future(app(scope, receive, send))
    for _ in range(20):
        await asyncio.sleep(0)
    assert service.seen == ["acme/m"]
    gone.set()
    await asyncio.wait_for(handling, 5)
    assert service.cancelled
    assert sent[0]["status"] == 499
