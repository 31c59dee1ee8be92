"""The proxy middleware names the model of each request as Serve's multiplexed-model header."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tenantserve.integrations.ray_proxy import (
    CALLBACK,
    ModelIdHeader,
    model_of,
    proxy_middlewares,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/v2/models/acme/macros/infer", [], "acme/macros"),
        ("/v2/models/acme/macros/versions/1/infer", [], "acme/macros"),
        ("/v2/models/acme/macros@stable/infer", [], "acme/macros"),  # routed by the model
        ("/invocations", [(b"x-amzn-sagemaker-target-model", b"acme/m@2")], "acme/m"),
        ("/v2/models/acme/macros/ready", [], "acme/macros"),
        ("/v2/models/acme/macros", [], "acme/macros"),
        ("/v2/repository/models/acme/macros/load", [], "acme/macros"),
        ("/models/acme/macros.tar.gz/invoke", [], "acme/macros.tar.gz"),
        ("/models/acme/macros", [], "acme/macros"),
        ("/invocations", [(b"x-amzn-sagemaker-target-model", b"acme/m.tar.gz")], "acme/m.tar.gz"),
        ("/endpoints/ep/invocations", [(b"X-Amzn-Target-Model", b"acme/m")], "acme/m"),
        ("/invocations", [], None),
        ("/v2/models/../etc/infer", [], None),
        ("/v2/health/ready", [], None),
        ("/metrics", [], None),
    ],
)
def test_model_of_reads_urls_and_target_headers(
    path: str, headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    assert model_of(path, headers) == expected


async def _echo(request: Request) -> PlainTextResponse:
    values = [
        v for k, v in request.headers.items() if k.replace("-", "_") == "serve_multiplexed_model_id"
    ]
    return PlainTextResponse(",".join(values))


@pytest.mark.anyio
async def test_middleware_sets_the_header_and_replaces_a_clients_own() -> None:
    app = ModelIdHeader(Starlette(routes=[Route("/{path:path}", _echo, methods=["GET", "POST"])]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        assert (await client.post("/v2/models/acme/m/infer")).text == "acme/m"
        spoofed = {"serve-multiplexed-model-id": "other/model"}
        assert (await client.post("/v2/models/acme/m/infer", headers=spoofed)).text == "acme/m"
        # Without a model in the request, a client's own header is left alone.
        assert (await client.get("/v2/health/ready", headers=spoofed)).text == "other/model"
        assert (await client.get("/metrics")).text == ""


def test_callback_is_importable_by_serve_and_returns_the_middleware() -> None:
    module, _, name = CALLBACK.partition(":")
    assert module == ModelIdHeader.__module__
    assert name == proxy_middlewares.__name__
    (middleware,) = proxy_middlewares()
    factory: object = middleware.cls
    assert factory is ModelIdHeader
