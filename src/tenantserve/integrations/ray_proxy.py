"""Ray Serve proxy middleware: names each request's model in Serve's multiplexed-model header.

Clients (tritonclient, boto3) name the model in the URL or in SageMaker's TargetModel header;
Serve's proxy reads only ``serve_multiplexed_model_id``. This middleware runs inside the
proxy, before it picks a replica, and copies the model id into that header, so the request
router (``ray_router.py``) can send the request to a replica that holds the model. It is
loaded by Serve through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (see :data:`CALLBACK`).
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantserve.errors import TenantServeError
from tenantserve.protocols.oip.routes import split_target
from tenantserve.protocols.sagemaker.routes import TARGET_HEADERS
from tenantserve.types import ModelRef

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
"""The environment variable Serve's proxy reads, at start, for a middleware callback."""
CALLBACK = "tenantserve.integrations.ray_proxy:proxy_middlewares"
"""Its value for tenantserve; the proxy's Python must be able to import tenantserve."""
MODEL_HEADER = "serve_multiplexed_model_id"
"""Serve's header for the model a request needs (Serve also accepts it with hyphens)."""

_OIP_MODELS = "/v2/models/"
_OIP_REPOSITORY = "/v2/repository/models/"
_SAGEMAKER_MODELS = "/models/"
_TARGETS = frozenset(name.encode() for name in TARGET_HEADERS)
_MODEL_HEADERS = frozenset({MODEL_HEADER.encode(), MODEL_HEADER.replace("_", "-").encode()})


def model_of(path: str, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The model a request is for, read the way the routes read it; ``None`` when none.

    An invalid id gives ``None``: the request is routed anywhere and the replica answers 400.
    """
    try:
        if path.startswith(_OIP_MODELS):
            return split_target(path[len(_OIP_MODELS) :], ("ready", "infer"))[0].model_id.value
        if path.startswith(_OIP_REPOSITORY):
            return split_target(path[len(_OIP_REPOSITORY) :], ("load", "unload"))[0].model_id.value
        if path.startswith(_SAGEMAKER_MODELS):
            raw = path[len(_SAGEMAKER_MODELS) :].removesuffix("/invoke")
            return ModelRef.parse(raw).model_id.value
        if path == "/invocations" or path.endswith("/invocations"):
            for name, value in headers:
                if name.lower() in _TARGETS:
                    return ModelRef.parse(value.decode("latin-1")).model_id.value
    except TenantServeError:
        return None
    return None


class ModelIdHeader:
    """Pure ASGI middleware: sets ``serve_multiplexed_model_id`` from the URL or TargetModel.

    A client's own value of that header is replaced when the request names a model, so the
    header cannot send a request's routing astray from the model it really calls.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
            model_id = model_of(scope.get("path", ""), headers)
            if model_id is not None:
                kept = [(k, v) for k, v in headers if k.lower() not in _MODEL_HEADERS]
                kept.append((MODEL_HEADER.encode(), model_id.encode()))
                scope = {**scope, "headers": kept}
        await self._app(scope, receive, send)


def proxy_middlewares() -> list[Middleware]:
    """The callback :data:`CALLBACK` names: the middlewares Serve wraps its proxy in."""
    return [Middleware(ModelIdHeader)]
