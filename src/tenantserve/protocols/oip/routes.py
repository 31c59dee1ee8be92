"""KServe Open Inference Protocol v2 over REST: health, metadata, infer and the model repository.

Model ids hold ``/`` (``acme/macros``) and tritonclient does not escape it, so one ``path``
route per prefix takes the rest of the URL and :func:`split_target` peels the action
(``/infer``, ``/ready``, ``/load``…) and ``/versions/{v}`` off the end. A consequence, stated
here once: a model id whose last segment is an action name is reached only through the
SageMaker API, and ``<id>/versions/<v>`` always means a version. Ids are validated before
the body is read and before the service is called.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tenantserve.errors import InvalidModelId, InvalidRequest
from tenantserve.protocols.auth import Access, authorize, covers
from tenantserve.protocols.endpoint import InferenceRoute, inference, read_body
from tenantserve.protocols.errors import Handler, guarded, json_response, retry_after
from tenantserve.protocols.keys import Role
from tenantserve.protocols.oip.codec import HTTP_CODEC
from tenantserve.types import ModelMetadata, ModelRef, ResolvedModel, TensorSpec

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

EXTENSIONS = ("model_repository", "binary_tensor_data")

_VERSIONED = re.compile(r"(?P<model>.+)/versions/(?P<version>[^/]*)")


def split_target(path: str, actions: tuple[str, ...]) -> tuple[ModelRef, str]:
    """``<id>[@<v>][/versions/<v>][/<action>]`` → (validated reference, action or ``""``).

    The version is a number or an alias (docs/versions.md); which ones exist is the
    service's to say.

    Raises:
        InvalidModelId: the id or the version is not valid, or two versions disagree.
    """
    action = ""
    for candidate in actions:
        if path.endswith("/" + candidate):
            path, action = path[: -len(candidate) - 1], candidate
            break
    versioned = _VERSIONED.fullmatch(path)
    if versioned is None:
        return ModelRef.parse(path), action
    if not versioned["version"]:
        raise InvalidModelId(f"model {versioned['model'][:80]!r}: /versions/ needs a version")
    return ModelRef.parse(versioned["model"], versioned["version"]), action


def oip_routes(
    service: InferenceService,
    metrics: Metrics,
    *,
    max_body_bytes: int,
    version: str,
    access: Access | None = None,
) -> list[BaseRoute]:
    """The OIP v2 REST routes; ``version`` is the server version shown by ``GET /v2``.

    Health and server metadata are open; model routes need a key with the ``invoke`` role
    and the repository extension one with ``manage`` (when ``access`` has keys).
    """
    api = _OipApi(service, max_body_bytes=max_body_bytes, version=version)
    access = access or Access(None, max_body_bytes=max_body_bytes)

    def route(path: str, handler: Handler, method: str, role: Role | None = None) -> Route:
        if role is not None:
            handler = access.protect(handler, role)
        return Route(path, guarded(handler, "oip"), methods=[method])

    infer = inference(
        HTTP_CODEC, service, protocol="oip", metrics=metrics, access=access,
        max_body_bytes=max_body_bytes,
    )  # fmt: skip
    return [
        route("/v2/health/live", api.live, "GET"),
        route("/v2/health/ready", api.ready, "GET"),
        route("/v2", api.server_metadata, "GET"),
        route("/v2/models/{target:path}", api.model_get, "GET", Role.INVOKE),
        # Versioned first: "/versions/<v>" always means a version (see the module).
        InferenceRoute("/v2/models/{model:path}/versions/{version}/infer", infer, methods=["POST"]),
        InferenceRoute("/v2/models/{model:path}/infer", infer, methods=["POST"]),
        route("/v2/models/{target:path}", api.model_post, "POST", Role.INVOKE),
        route("/v2/repository/index", api.index, "POST", Role.MANAGE),
        route("/v2/repository/models/{target:path}", api.repository, "POST", Role.MANAGE),
    ]


class _OipApi:
    def __init__(self, service: InferenceService, *, max_body_bytes: int, version: str) -> None:
        self._service = service
        self._max_body_bytes = max_body_bytes
        self._server = orjson.dumps(
            {"name": "tenantserve", "version": version, "extensions": list(EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        if self._service.live():
            return json_response({"live": True})
        return _unavailable({"live": False, "error": "server is not live"})

    async def ready(self, request: Request) -> Response:
        if self._service.ready():
            return json_response({"ready": True})
        return _unavailable({"ready": False, "error": "server is not ready"})

    async def server_metadata(self, request: Request) -> Response:
        return Response(self._server, media_type="application/json")

    async def model_get(self, request: Request) -> Response:
        ref, action = split_target(request.path_params["target"], ("ready", "infer"))
        authorize(request, ref.model_id)
        if action == "infer":
            use_post = f"inference is a POST to /v2/models/{ref}/infer, not a GET"
            return json_response({"error": use_post}, 405, {"Allow": "POST"})
        model = await self._service.resolve(ref)
        if action == "ready":
            # tritonclient and KServe clients read 200 as ready and any 4xx as not ready.
            named = {"name": model.name.value, "version": model.version}
            if self._service.is_resident(model.key):
                return json_response({**named, "ready": True})
            error = f"model {ref} is not loaded"
            return json_response({**named, "ready": False, "error": error}, 400)
        found = await self._service.metadata(model.key)
        return json_response(
            metadata_document(found, model, await self._service.versions_of(model))
        )

    async def model_post(self, request: Request) -> Response:
        """A POST that is not an inference (those are the inference routes')."""
        ref, _ = split_target(request.path_params["target"], ())
        authorize(request, ref.model_id)
        return json_response({"error": "POST needs /infer"}, 405, {"Allow": "GET"})

    async def index(self, request: Request) -> Response:
        body = await read_body(request, self._max_body_bytes)
        ready_only = False
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise InvalidRequest("request body is not valid JSON") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                raise InvalidRequest('index body must be {"ready": true|false}')
            ready_only = doc.get("ready", False)
        entries = [
            {"name": e.model_id, "version": e.version, "state": e.state, "reason": e.reason}
            for e in await self._service.index()
            if (not ready_only or e.state == "READY") and covers(request, e.model_id)
        ]
        return json_response(entries)

    async def repository(self, request: Request) -> Response:
        ref, action = split_target(request.path_params["target"], ("load", "unload"))
        authorize(request, ref.model_id)
        if action not in ("load", "unload"):
            return json_response({"error": "repository paths end in /load or /unload"}, 404)
        # A bare id loads or unloads the version it serves now (read afresh for a load).
        model = await self._service.resolve(ref, fresh=action == "load")
        if action == "load":
            # As Triton: loading a resident model reloads it from the store; the old copy
            # serves until the new one is in, and keeps serving if the reload fails.
            await self._service.load(model.key, reload=True)
        else:
            await self._service.unload(model.key)
        return json_response({"name": model.name.value, "version": model.version, "action": action})


def metadata_document(
    metadata: ModelMetadata, model: ResolvedModel, versions: Sequence[str]
) -> dict[str, Any]:
    """The OIP model metadata response of ``model`` (``-1`` marks a dimension of any size):
    named as asked, with every version the model has."""
    return {
        "name": model.name.value,
        "versions": list(versions),
        "platform": metadata.platform,
        "inputs": [_tensor(spec) for spec in metadata.inputs],
        "outputs": [_tensor(spec) for spec in metadata.outputs],
    }


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _unavailable(body: dict[str, Any]) -> Response:
    return json_response(body, 503, {"Retry-After": retry_after(1.0)})
