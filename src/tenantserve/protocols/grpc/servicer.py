"""The RPCs of ``inference.GRPCInferenceService``, each the way its HTTP route goes.

The same keys and roles (metadata ``authorization: Bearer <key>`` or ``x-api-key``), the same
checks in the same order, the same errors with the same messages (one table,
protocols/errors.py); ModelInfer follows protocols/endpoint.invoke: authorize → admit (quotas,
a slot, the load queue) → decode (off the loop when large) → predict → encode.

A call's deadline is the request's: one already past is refused at once with
DEADLINE_EXCEEDED; the work is cancelled when it passes or when the client cancels, which
frees the admission slot, the quota and the model (protocols/endpoint.py's disconnect watcher
job for HTTP).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from tenantserve.errors import InvalidRequest, Unauthenticated
from tenantserve.protocols.auth import (
    API_KEY_HEADER,
    MISSING_CREDENTIALS,
    Access,
    authorize_principal,
    principal_covers,
    require_role,
)
from tenantserve.protocols.endpoint import OFF_LOOP_BYTES
from tenantserve.protocols.errors import GrpcStatus, grpc_status
from tenantserve.protocols.grpc._generated import grpc_service_pb2 as pb
from tenantserve.protocols.grpc._generated.grpc_service_pb2_grpc import (
    GRPCInferenceServiceServicer,
)
from tenantserve.protocols.grpc.codec import decode_request, encode_response, payload_bytes
from tenantserve.protocols.keys import Principal, Role
from tenantserve.types import ModelRef, ResolvedModel, TensorSpec

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

EXTENSIONS = ("model_repository",)
"""Triton's binary tensor extension is HTTP's; gRPC carries raw tensors in the core protocol."""
SERVED = (
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
    "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
)  # fmt: skip
CACHE_METADATA = "x-tenantserve-cache"
"""Trailing metadata of ModelInfer, as HTTP's X-Tenantserve-Cache header: ``hit`` or ``miss``."""


def _not_served(name: str) -> Callable[[OipServicer, object, Context], Awaitable[NoReturn]]:
    message = f"tenantserve does not serve {name}; its gRPC service has {', '.join(SERVED)}"

    async def refuse(self: OipServicer, request: object, context: Context) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return refuse


class OipServicer(GRPCInferenceServiceServicer):
    """The RPCs (see the module); a :class:`~tenantserve.protocols.grpc.server.GrpcServer` serves
    one."""

    def __init__(
        self, service: InferenceService, metrics: Metrics, access: Access, version: str
    ) -> None:
        self._service = service
        self._metrics = metrics
        self._access = access
        self._version = version

    # -- health and server metadata: open, as on HTTP ----------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._service.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.ready())

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="tenantserve", version=self._version, extensions=EXTENSIONS
        )

    # -- models: the invoke role and the key's scopes ------------------------------------------

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        async def ready(principal: Principal) -> pb.ModelReadyResponse:
            model = await self._model(principal, request.name, request.version)
            return pb.ModelReadyResponse(ready=self._service.is_resident(model.key))

        return await self._answer(context, Role.INVOKE, ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        async def metadata(principal: Principal) -> pb.ModelMetadataResponse:
            model = await self._model(principal, request.name, request.version)
            found = await self._service.metadata(model.key)
            return pb.ModelMetadataResponse(
                name=model.name.value,
                versions=await self._service.versions_of(model),
                platform=found.platform,
                inputs=[_tensor(spec) for spec in found.inputs],
                outputs=[_tensor(spec) for spec in found.outputs],
            )

        return await self._answer(context, Role.INVOKE, metadata)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        async def infer(principal: Principal) -> pb.ModelInferResponse:
            ref = _reference(principal, request.model_name, request.model_version)
            async with self._service.call(ref) as call:
                large = payload_bytes(request) > OFF_LOOP_BYTES
                parsed = (
                    await call.off_loop(decode_request, request)
                    if large
                    else decode_request(request)
                )
                prediction = await call.predict(parsed.tensors, outputs=parsed.outputs)
            model = call.model
            response = encode_response(
                model.name.value, parsed, prediction.outputs, model_version=model.version
            )
            context.set_trailing_metadata(((CACHE_METADATA, "hit" if prediction.hit else "miss"),))
            return response

        started = time.perf_counter()
        code = "CANCELLED"  # unless it ends otherwise: the caller left, or shutdown
        try:
            response = await self._answer(context, Role.INVOKE, infer)
            code = "OK"
            return response
        except grpc.aio.AbortError:
            code = context.code().name if context.code() is not None else "UNKNOWN"
            raise
        finally:
            self._metrics.invocations.labels("grpc", code).inc()
            self._metrics.request.labels("grpc").observe(time.perf_counter() - started)

    # -- the repository extension: the manage role ---------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        async def index(principal: Principal) -> pb.RepositoryIndexResponse:
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=e.model_id, version=e.version, state=e.state, reason=e.reason
                    )
                    for e in await self._service.index()
                    if (not request.ready or e.state == "READY")
                    and principal_covers(principal, e.model_id)
                ]
            )

        return await self._answer(context, Role.MANAGE, index)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        async def load(principal: Principal) -> pb.RepositoryModelLoadResponse:
            ref = _reference(principal, request.model_name, "")
            if request.parameters:
                raise _no_overrides(sorted(request.parameters))
            # As Triton and the HTTP route: loading a resident model reloads it from the
            # store; the old copy serves until the new one is in, and if the reload fails.
            # A bare id loads the version it serves now (read afresh).
            model = await self._service.resolve(ref, fresh=True)
            await self._service.load(model.key, reload=True)
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, Role.MANAGE, load)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        async def unload(principal: Principal) -> pb.RepositoryModelUnloadResponse:
            # Parameters are ignored: tritonclient always sends unload_dependents, and a
            # model here has no dependents to unload.
            model = await self._model(principal, request.model_name, "")
            await self._service.unload(model.key)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, Role.MANAGE, unload)

    # -- declared by the .proto, not served ----------------------------------------------------

    ModelStreamInfer = _not_served("ModelStreamInfer")
    ModelConfig = _not_served("ModelConfig")
    ModelStatistics = _not_served("ModelStatistics")
    SystemSharedMemoryStatus = _not_served("SystemSharedMemoryStatus")
    SystemSharedMemoryRegister = _not_served("SystemSharedMemoryRegister")
    SystemSharedMemoryUnregister = _not_served("SystemSharedMemoryUnregister")
    CudaSharedMemoryStatus = _not_served("CudaSharedMemoryStatus")
    CudaSharedMemoryRegister = _not_served("CudaSharedMemoryRegister")
    CudaSharedMemoryUnregister = _not_served("CudaSharedMemoryUnregister")
    TraceSetting = _not_served("TraceSetting")
    LogSettings = _not_served("LogSettings")

    # -- every protected RPC's frame -----------------------------------------------------------

    async def _answer(
        self, context: Context, role: Role, work: Callable[[Principal], Awaitable[T]]
    ) -> T:
        """``work``'s answer, for a caller with ``role``, within the call's deadline; every
        error ends the call with its status (protocols/errors.py)."""
        # grpc's stubs say float; the call has no deadline when it is None.
        left_s: float | None = context.time_remaining()
        if left_s is not None and left_s <= 0:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the call's deadline had passed when it reached the server; nothing was run",
            )
        deadline = asyncio.timeout(left_s)
        try:
            principal = self._principal(context)
            require_role(principal, role)
            async with deadline:
                return await work(principal)
        except TimeoutError as exc:
            status = (
                GrpcStatus("DEADLINE_EXCEEDED", "the call's deadline passed before its answer")
                if deadline.expired()
                else grpc_status(exc)
            )
        except Exception as exc:  # the one place any failure becomes a gRPC status
            status = grpc_status(exc)
        await context.abort(grpc.StatusCode[status.code], status.message, status.trailing)

    async def _model(self, principal: Principal, name: str, version: str) -> ResolvedModel:
        """The version a call names (``model_version``, or ``@`` in the name), once its id
        and scope are checked."""
        return await self._service.resolve(_reference(principal, name, version))

    def _principal(self, context: Context) -> Principal:
        api_key: str | None = None
        authorization = ""
        for key, value in context.invocation_metadata() or ():
            if key == API_KEY_HEADER and api_key is None and isinstance(value, str):
                api_key = value
            elif key == "authorization" and not authorization and isinstance(value, str):
                authorization = value
        principal = self._access.from_key(api_key, authorization)
        if principal is None:
            raise Unauthenticated(MISSING_CREDENTIALS)
        return principal


def _reference(principal: Principal, name: str, version: str) -> ModelRef:
    """The model a call names, checked as HTTP checks a path: id, version, then scope."""
    ref = ModelRef.parse(name, version)
    authorize_principal(principal, ref.model_id)
    return ref


def _tensor(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _no_overrides(keys: list[str]) -> InvalidRequest:
    return InvalidRequest(
        f"RepositoryModelLoad takes no parameters (given: {', '.join(keys)[:200]}): models "
        "load from the store as they are, with no config or file overrides"
    )
