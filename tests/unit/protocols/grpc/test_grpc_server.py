"""The gRPC service in-process: grpc.aio client and server on one loop, a fake InferenceService."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from fixtures.fake_call import FakeCall
from tenantserve.errors import Overloaded, TenantLimitExceeded
from tenantserve.metrics import Metrics
from tenantserve.protocols.auth import MISSING_CREDENTIALS, Access
from tenantserve.protocols.grpc._generated import grpc_service_pb2 as pb
from tenantserve.protocols.grpc._generated.grpc_service_pb2_grpc import (
    GRPCInferenceServiceStub,
)
from tenantserve.protocols.grpc.server import GrpcServer
from tenantserve.protocols.grpc.servicer import OipServicer
from tenantserve.protocols.keys import KeyRing
from tenantserve.reports import RepositoryEntry
from tenantserve.service import InferenceService
from tenantserve.store.versions import choose_unversioned
from tenantserve.types import ModelId, ModelMetadata, ModelRef, ResolvedModel, Tensors, TensorSpec

ACME = "acme-invoke-key-000001"
OPS = "ops-manage-key-0000001"
KEYS = KeyRing.from_document(
    {
        "keys": [
            {"name": "acme", "key": ACME, "scopes": ["acme/*"]},
            {"name": "ops", "key": OPS, "scopes": ["*"], "roles": ["manage"]},
        ]
    },
    where="test",
)
INPUTS = (TensorSpec("x", "FP32", (-1, 2)),)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeService:
    """The InferenceService methods the servicer calls; ``run`` answers each inference."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: Exception | None = None
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.slow = False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def is_resident(self, model_id: ModelId) -> bool:
        return model_id.value == "acme/ready"

    def call(self, target: ModelRef | ResolvedModel) -> FakeCall:
        async def run(model_id: ModelId, tensors: Tensors) -> Tensors:
            self.calls.append(("infer", model_id.value))
            self.started.set()
            if self.slow:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
            return {"y": np.asarray(tensors["x"]) * 2}

        def admit() -> None:
            if self.refuse is not None:
                raise self.refuse

        return FakeCall(
            target, resolve=self.resolve, inputs=INPUTS, run=run, metadata=self.metadata,
            admit=admit,
        )  # fmt: skip

    async def metadata(self, model_id: ModelId) -> ModelMetadata:
        return ModelMetadata(model_id.value, "onnxruntime_onnx", INPUTS, (INPUTS[0],))

    async def resolve(self, ref: ModelRef, *, fresh: bool = False) -> ResolvedModel:
        return choose_unversioned(ref.model_id, ref.selector)  # no versioned models here

    async def versions_of(self, model: ResolvedModel) -> list[str]:
        return [model.version]

    async def index(self) -> list[RepositoryEntry]:
        return [RepositoryEntry("acme/ready", "READY"), RepositoryEntry("beta/m", "UNAVAILABLE")]

    async def load(self, model_id: ModelId, *, reload: bool = False) -> None:
        self.calls.append(("load", model_id.value))

    async def unload(self, model_id: ModelId) -> None:
        self.calls.append(("unload", model_id.value))


class Harness:
    def __init__(self, service: FakeService, stub: GRPCInferenceServiceStub, metrics: Metrics):
        self.service = service
        self.stub = stub
        self.metrics = metrics

    def counted(self, code: str) -> float:
        labels = {"protocol": "grpc", "code": code}
        return self.metrics.registry.get_sample_value("tenantserve_invocations_total", labels) or 0


async def _serve(keys: KeyRing | None) -> AsyncIterator[Harness]:
    service = FakeService()
    metrics = Metrics(CollectorRegistry())
    server = GrpcServer(
        cast(InferenceService, service), metrics, access=Access(keys, max_body_bytes=1 << 20),
        host="127.0.0.1", port=0, max_body_bytes=1 << 20, version="9.9",
    )  # fmt: skip
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Harness(service, GRPCInferenceServiceStub(channel), metrics)
    await server.stop(0)


@pytest.fixture
async def open_server() -> AsyncIterator[Harness]:
    async for harness in _serve(None):
        yield harness


@pytest.fixture
async def keyed_server() -> AsyncIterator[Harness]:
    async for harness in _serve(KEYS):
        yield harness


def _request(model: str = "acme/m", **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(
        name="x", datatype="FP32", shape=[1, 2],
        contents=pb.InferTensorContents(fp32_contents=[1.5, 2.0]),
    )  # fmt: skip
    return request


async def _fails(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@pytest.mark.anyio
async def test_health_metadata_infer_and_repository(open_server: Harness) -> None:
    stub = open_server.stub
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    server = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (server.name, server.version, list(server.extensions)) == (
        "tenantserve", "9.9", ["model_repository"],
    )  # fmt: skip
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="acme/ready"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="acme/m", version="1"))).ready
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="acme/m"))
    assert (metadata.name, list(metadata.versions), metadata.platform) == (
        "acme/m", ["1"], "onnxruntime_onnx",
    )  # fmt: skip
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("x", "FP32", [-1, 2])
    ]

    call = stub.ModelInfer(_request(id="r1"))
    answer = await call
    assert (answer.model_name, answer.id) == ("acme/m", "r1")
    assert list(answer.outputs[0].contents.fp32_contents) == [3.0, 4.0]
    assert ("x-tenantserve-cache", "hit") in tuple(await call.trailing_metadata() or ())
    assert open_server.counted("OK") == 1

    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.state) for m in index.models] == [("acme/ready", "READY")]
    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="acme/m"))
    unload = pb.RepositoryModelUnloadRequest(model_name="acme/m")
    unload.parameters["unload_dependents"].bool_param = False  # tritonclient always sends it
    await stub.RepositoryModelUnload(unload)
    assert open_server.service.calls[-2:] == [("load", "acme/m"), ("unload", "acme/m")]


@pytest.mark.anyio
async def test_errors_end_calls_with_the_table_s_status(open_server: Harness) -> None:
    stub = open_server.stub
    bad_id = await _fails(stub.ModelMetadata(pb.ModelMetadataRequest(name="../etc")))
    assert bad_id.code() == grpc.StatusCode.INVALID_ARGUMENT
    version = await _fails(stub.ModelInfer(_request(model_version="2")))
    assert version.code() == grpc.StatusCode.NOT_FOUND
    assert version.details() == (
        "model acme/m has no version 2: it has no numbered version folders, so it serves "
        "version 1 only"
    )

    open_server.service.refuse = Overloaded("server busy: retry", retry_after_s=2.5)
    busy = await _fails(stub.ModelInfer(_request()))
    assert (busy.code(), busy.details()) == (grpc.StatusCode.UNAVAILABLE, "server busy: retry")
    assert ("retry-after", "3") in tuple(busy.trailing_metadata() or ())
    open_server.service.refuse = TenantLimitExceeded("tenant acme is over its rate")
    quota = await _fails(stub.ModelInfer(_request()))
    assert quota.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    open_server.service.refuse = RuntimeError("/srv/secret path")
    internal = await _fails(stub.ModelInfer(_request()))
    assert (internal.code(), internal.details()) == (
        grpc.StatusCode.INTERNAL, "internal server error",
    )  # fmt: skip
    assert open_server.counted("UNAVAILABLE") == 1
    assert open_server.counted("INTERNAL") == 1

    load = pb.RepositoryModelLoadRequest(model_name="acme/m")
    load.parameters["config"].string_param = "{}"
    refused = await _fails(stub.RepositoryModelLoad(load))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no parameters (given: config)" in (refused.details() or "")
    unserved = await _fails(stub.ModelConfig(pb.ModelConfigRequest(name="acme/m")))
    assert unserved.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (unserved.details() or "").startswith("tenantserve does not serve ModelConfig;")


@pytest.mark.anyio
async def test_keys_roles_and_scopes_as_on_http(keyed_server: Harness) -> None:
    stub = keyed_server.stub
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready  # open, as on HTTP
    missing = await _fails(stub.ModelInfer(_request()))
    assert (missing.code(), missing.details()) == (
        grpc.StatusCode.UNAUTHENTICATED, MISSING_CREDENTIALS,
    )  # fmt: skip
    unknown = await _fails(stub.ModelInfer(_request(), metadata=(("x-api-key", "nope" * 5),)))
    assert (unknown.code(), unknown.details()) == (
        grpc.StatusCode.UNAUTHENTICATED, "API key not recognised",
    )  # fmt: skip

    bearer = (("authorization", f"Bearer {ACME}"),)
    assert (await stub.ModelInfer(_request(), metadata=bearer)).outputs
    other = await _fails(stub.ModelInfer(_request("beta/m"), metadata=bearer))
    assert (other.code(), other.details()) == (
        grpc.StatusCode.PERMISSION_DENIED, "this key may not use model beta/m",
    )  # fmt: skip
    manage = await _fails(stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=bearer))
    assert manage.details() == "this key does not have the 'manage' role"

    ops = (("x-api-key", OPS),)
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=ops)
    assert [m.name for m in index.models] == ["acme/ready", "beta/m"]
    no_invoke = await _fails(stub.ModelInfer(_request(), metadata=ops))
    assert no_invoke.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.anyio
async def test_a_deadline_that_passes_cancels_the_work(open_server: Harness) -> None:
    open_server.service.slow = True
    late = await _fails(open_server.stub.ModelInfer(_request(), timeout=0.3))
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(open_server.service.cancelled.wait(), 5)


@pytest.mark.anyio
async def test_a_cancelled_call_cancels_the_work_and_is_counted(open_server: Harness) -> None:
    open_server.service.slow = True
    call = open_server.stub.ModelInfer(_request())
    await asyncio.wait_for(open_server.service.started.wait(), 5)
    call.cancel()
    await asyncio.wait_for(open_server.service.cancelled.wait(), 5)
    for _ in range(100):  # the count lands as the server's task unwinds
        if open_server.counted("CANCELLED") == 1:
            break
        await asyncio.sleep(0.01)
    assert open_server.counted("CANCELLED") == 1


class _PastDeadline:
    """A call whose deadline passed before it reached its handler (too rare to time for real)."""

    def time_remaining(self) -> float:
        return -0.001

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = ()) -> None:
        raise LookupError(code, details)

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.anyio
async def test_a_deadline_already_past_is_refused_before_any_work() -> None:
    service = FakeService()
    servicer = OipServicer(
        cast(InferenceService, service),
        Metrics(CollectorRegistry()),
        Access(None, max_body_bytes=1),
        "1",
    )
    with pytest.raises(LookupError) as refused:
        await servicer.ModelInfer(_request(), cast(Any, _PastDeadline()))
    assert refused.value.args[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    assert service.calls == []


@pytest.mark.anyio
async def test_a_port_in_use_is_refused_with_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = GrpcServer(
            cast(InferenceService, FakeService()), Metrics(CollectorRegistry()),
            access=Access(None, max_body_bytes=1), host="127.0.0.1", port=port,
            max_body_bytes=1, version="1",
        )  # fmt: skip
        with pytest.raises(OSError, match="choose another --grpc-port"):
            await server.start()


@pytest.mark.anyio
async def test_a_message_over_the_body_limit_is_refused_by_grpc(open_server: Harness) -> None:
    request = pb.ModelInferRequest(model_name="acme/m", raw_input_contents=[b"\0" * (2 << 20)])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1 << 19])
    refused = await _fails(open_server.stub.ModelInfer(request))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert open_server.service.calls == []
