"""SageMaker: the runtime's invocations and the BYOC multi-model container API.

Runtime: ``POST /endpoints/{EndpointName}/invocations`` (what boto3's ``invoke_endpoint``
calls) and ``POST /invocations``, the model named by ``X-Amzn-SageMaker-Target-Model``.
Container: ``GET /ping`` and ``/models`` load · list · describe · unload · invoke. Unlike the
container contract, invoking a model that is not loaded loads it (the server is lazy).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tenantserve.errors import InvalidModelId, InvalidRequest, ModelNotFound
from tenantserve.protocols.auth import Access, authorize, covers
from tenantserve.protocols.endpoint import InferenceRoute, inference, read_body
from tenantserve.protocols.errors import Handler, guarded, json_response, retry_after
from tenantserve.protocols.keys import Role
from tenantserve.protocols.sagemaker.codec import (
    decode_invocation,
    encode_predictions,
    response_type,
)
from tenantserve.types import ModelId, ModelRef, ResolvedModel, Tensors, TensorSpec

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

TARGET_HEADERS = ("x-amzn-sagemaker-target-model", "x-amzn-target-model")
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def sagemaker_routes(
    service: InferenceService,
    metrics: Metrics,
    *,
    max_body_bytes: int,
    store_url: str = "",
    access: Access | None = None,
    default_model: str | None = None,
) -> list[BaseRoute]:
    """The SageMaker runtime and container routes; ``store_url`` is the configured store,
    ``default_model`` the model ``/invocations`` serves when no header names one.

    ``/ping`` is open; invocations need the ``invoke`` role and the container API's model
    management (load, list, describe, unload) the ``manage`` role (when ``access`` has keys).
    """
    api = _SageMakerApi(
        service, max_body_bytes=max_body_bytes, store_url=store_url, default_model=default_model
    )
    access = access or Access(None, max_body_bytes=max_body_bytes)

    def invocations(target: Callable[[Request], ModelRef] | None = None) -> Handler:
        # TargetModel reaches any version: acme/macros@2, acme/macros@stable, or the
        # version's own path acme/macros/2 (docs/versions.md).
        return inference(
            _CODEC, service, protocol="sagemaker", metrics=metrics, access=access,
            max_body_bytes=max_body_bytes, target=target,
        )  # fmt: skip

    by_header = invocations(api.target)

    def route(path: str, handler: Handler, method: str, role: Role | None = None) -> Route:
        if role is not None:
            handler = access.protect(handler, role)
        return Route(path, guarded(handler, "sagemaker"), methods=[method])

    return [
        route("/ping", api.ping, "GET"),
        InferenceRoute("/invocations", by_header, methods=["POST"]),
        InferenceRoute("/endpoints/{endpoint}/invocations", by_header, methods=["POST"]),
        route("/models", api.list_models, "GET", Role.MANAGE),
        route("/models", api.load_model, "POST", Role.MANAGE),
        route("/models/{target:path}", api.describe_model, "GET", Role.MANAGE),
        route("/models/{target:path}", api.unload_model, "DELETE", Role.MANAGE),
        InferenceRoute("/models/{model:path}/invoke", invocations(), methods=["POST"]),
        route("/models/{target:path}", api.not_invoke, "POST", Role.INVOKE),
    ]


class _SageMakerApi:
    def __init__(
        self,
        service: InferenceService,
        *,
        max_body_bytes: int,
        store_url: str,
        default_model: str | None = None,
    ) -> None:
        self._service = service
        self._max_body_bytes = max_body_bytes
        self._store_prefix = store_url.rstrip("/") + "/" if store_url else ""
        self._default_model = default_model

    async def ping(self, request: Request) -> Response:
        if self._service.ready():
            return json_response({"status": "Healthy"})
        return json_response(
            {"status": "Unhealthy", "error": "server is not ready"},
            503,
            {"Retry-After": retry_after(1.0)},
        )

    def target(self, request: Request) -> ModelRef:
        """The model ``/invocations`` names: its TargetModel header, or the default model."""
        raw = next(
            (request.headers[h] for h in TARGET_HEADERS if h in request.headers),
            self._default_model,
        )
        if raw is None:
            raise InvalidRequest("missing X-Amzn-SageMaker-Target-Model header naming the model")
        return ModelRef.parse(raw)

    async def not_invoke(self, request: Request) -> Response:
        """A POST under /models/ that is not an inference (those end in /invoke)."""
        return json_response({"error": "POST /models/{name} needs /invoke"}, 404)

    async def load_model(self, request: Request) -> Response:
        doc = orjson_object(await read_body(request, self._max_body_bytes))
        name, url = doc.get("model_name"), doc.get("url")
        if not isinstance(name, str) or not isinstance(url, str):
            raise InvalidRequest('body must be {"model_name": "<id>", "url": "<location>"}')
        model_id = ModelId.parse(name)
        authorize(request, model_id)
        self._check_url(url, model_id)
        await self._service.load(model_id, exist_ok=False)
        return json_response(
            {"modelName": model_id.value, "modelUrl": self._url_of(model_id.value)}
        )

    async def list_models(self, request: Request) -> Response:
        limit = _limit(request.query_params.get("limit"))
        token = request.query_params.get("next_page_token") or request.query_params.get(
            "nextPageToken"
        )
        after = _decode_token(token) if token else ""
        # Keyset paging on the sorted ids: loads and evictions between pages skip nothing
        # that stays resident and repeat nothing.
        ids = sorted(
            s.model_id
            for s in self._service.resident()
            if s.model_id > after and covers(request, s.model_id)
        )
        page = ids[:limit]
        next_token = _encode_token(page[-1]) if len(ids) > limit else None
        models = [{"modelName": i, "modelUrl": self._url_of(i)} for i in page]
        return json_response({"models": models, "nextPageToken": next_token})

    async def describe_model(self, request: Request) -> Response:
        model_id = ModelId.parse(request.path_params["target"])
        authorize(request, model_id)
        status = self._service.status_of(model_id)
        return json_response(
            {
                "modelName": model_id.value,
                "modelUrl": self._url_of(model_id.value),
                "state": status.state,
                "sizeBytes": status.nbytes,
                "pinned": status.pinned,
            }
        )

    async def unload_model(self, request: Request) -> Response:
        model_id = ModelId.parse(request.path_params["target"])
        authorize(request, model_id)
        if not self._service.is_resident(model_id):
            raise ModelNotFound(f"model {model_id} is not loaded")
        await self._service.unload(model_id)
        return json_response({"modelName": model_id.value})

    def _check_url(self, url: str, model_id: ModelId) -> None:
        """Accept only a location inside the configured store that names this very model.

        The url is never fetched: it must be the model id itself or ``<store-url>/<id>``,
        so ``http://169.254.169.254/…``, ``file:///etc/passwd`` or ``..`` tricks cannot
        reach anything (ShellTorch class). ``<store-url>/<id>/model`` names the model too:
        SageMaker unpacks each model of a multi-model endpoint there and sends that path.
        """
        location = url
        if self._store_prefix and url.startswith(self._store_prefix):
            location = url[len(self._store_prefix) :]
            if location == f"{model_id}/model":
                location = model_id.value
        try:
            named = ModelId.parse(location)
        except InvalidModelId:
            raise InvalidRequest(
                "url must be the model id or <store-url>/<model id> in the configured store"
            ) from None
        if named != model_id:
            raise InvalidRequest("url must name the same model as model_name")

    def _url_of(self, model_id: str) -> str:
        return self._store_prefix + model_id


@dataclass(frozen=True, slots=True)
class _Invocation:
    inputs: Callable[[tuple[TensorSpec, ...]], Tensors]  # the body decoded by the signature
    accept: str  # the response's media type
    outputs: None = None  # every output


class _SageMakerCodec:
    """SageMaker invocation bodies (JSON, CSV, text) ⇄ tensors. The model's signature says
    which input(s) a body feeds and with what datatype, so decoding waits for the lease."""

    def parse(self, headers: Headers, body: bytes) -> _Invocation:
        decode = functools.partial(decode_invocation, body, headers.get("content-type"))
        return _Invocation(decode, response_type(headers.get("accept")))

    def encode(self, parsed: _Invocation, model: ResolvedModel, outputs: Tensors) -> Response:
        return Response(encode_predictions(outputs, parsed.accept), media_type=parsed.accept)


_CODEC = _SageMakerCodec()


def orjson_object(body: bytes) -> dict[str, Any]:
    """A JSON object body, or :class:`InvalidRequest`."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("request body must be a JSON object")
    return doc


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _encode_token(model_id: str) -> str:
    return base64.urlsafe_b64encode(model_id.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        return ModelId.parse(raw).value
    except (binascii.Error, UnicodeDecodeError, ValueError, InvalidModelId):
        raise InvalidRequest("next_page_token is not a token this server issued") from None
