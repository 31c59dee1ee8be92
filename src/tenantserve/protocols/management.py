"""Operator routes: ``/v1/status`` and ``/v1/tenants`` (JSON), pin, unpin and promote (a
version to an alias), the ``/ui`` page.

They are one list, :func:`management_routes`, so whatever guards management (an API key
with an operator role) wraps all of them at once. The page is plain files shipped in the
package (``tenantserve/ui``) and polls ``/v1/status``; the schema is in docs/status.md and
in ``/openapi.json``.
"""

from __future__ import annotations

import importlib.resources
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from tenantserve.errors import InvalidRequest
from tenantserve.protocols.auth import Access, authorize
from tenantserve.protocols.endpoint import read_body
from tenantserve.protocols.errors import Handler, guarded, json_response
from tenantserve.protocols.keys import Role
from tenantserve.types import DEFAULT_ALIAS, ModelId, is_alias, is_version

if TYPE_CHECKING:
    from tenantserve.activity import HotEntry
    from tenantserve.reports import ServerStatus, TenantStatus
    from tenantserve.service import InferenceService

UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
}
"""Every file the page is made of; nothing else under ``/ui/`` is served."""

MAX_PROMOTE_BYTES = 4096
DEFAULT_MODELS = 1000
MAX_MODELS = 10_000

# The page needs nothing from anywhere else: no CDN, no inline script, no framing.
_UI_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
_NO_STORE = {"Cache-Control": "no-store"}


def management_routes(
    service: InferenceService, *, version: str, access: Access | None = None
) -> list[BaseRoute]:
    """``GET /v1/status``, ``POST /v1/models/{id}/pin|unpin|promote`` and ``GET /ui/``.

    Load and unload are the OIP repository routes (and SageMaker's ``/models``). With keys,
    pin and unpin need the ``manage`` role and the model in the key's scope; the status
    document shows every tenant, so it needs ``manage`` and scope ``*``. The page's static
    files stay open (they hold no data; the page reads ``/v1/status``).
    """
    api = _ManagementApi(service, version=version, assets=_read_ui())
    access = access or Access(None, max_body_bytes=0)

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, "oip"), methods=[method])

    status = access.protect(api.status, Role.MANAGE, every_tenant=True)
    tenants = access.protect(api.tenants, Role.MANAGE, every_tenant=True)
    return [
        route("/v1/status", status, "GET"),
        route("/v1/tenants", tenants, "GET"),
        route("/v1/models/{target:path}", access.protect(api.model_action, Role.MANAGE), "POST"),
        route("/ui", api.ui_root, "GET"),
        route("/ui/", api.ui_index, "GET"),
        route("/ui/{name}", api.ui_file, "GET"),
    ]


class _ManagementApi:
    def __init__(
        self, service: InferenceService, *, version: str, assets: dict[str, bytes]
    ) -> None:
        self._service = service
        self._version = version
        self._assets = assets

    async def status(self, request: Request) -> Response:
        raw = request.query_params.get("models", str(DEFAULT_MODELS))
        if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_MODELS:
            raise InvalidRequest(f"models must be a whole number from 0 to {MAX_MODELS}")
        doc = status_document(self._service.status(), version=self._version, models=int(raw))
        return json_response(doc, headers=_NO_STORE)

    async def tenants(self, request: Request) -> Response:
        return json_response(tenants_document(self._service.tenants()), headers=_NO_STORE)

    async def model_action(self, request: Request) -> Response:
        target: str = request.path_params["target"]
        raw, _, action = target.rpartition("/")
        if action not in ("pin", "unpin", "promote"):
            return json_response({"error": "POST /v1/models/{id}/pin, /unpin or /promote"}, 404)
        if action == "promote":
            return await self._promote(request, raw)
        model_id = ModelId.parse(raw)
        authorize(request, model_id)
        if action == "pin":
            # Pinning a model that is not resident loads it: "keep this one in memory".
            await self._service.load(model_id, pin=True)
        else:
            self._service.pin(model_id, False)
        return json_response({"model": model_id.value, "pinned": action == "pin"})

    async def _promote(self, request: Request, raw: str) -> Response:
        """``{"version": 2, "alias": "stable"}``: load version 2, then point the alias at it
        (docs/versions.md); ``alias`` defaults to the one bare ids follow."""
        model_id = ModelId.parse(raw)
        authorize(request, model_id)
        version, alias = _promotion(await read_body(request, MAX_PROMOTE_BYTES), model_id)
        promoted = await self._service.promote(model_id, version, alias)
        return json_response(
            {"model": model_id.value, "alias": alias, "version": promoted.version,
             "id": promoted.key.value}
        )  # fmt: skip

    async def ui_root(self, request: Request) -> Response:
        # Relative asset and API URLs then resolve under /ui/, behind any path prefix.
        return RedirectResponse("ui/", status_code=308)

    async def ui_index(self, request: Request) -> Response:
        return self._file("index.html")

    async def ui_file(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        if name not in UI_FILES:
            return json_response({"error": f"no such file under /ui/: {name[:64]!r}"}, 404)
        return self._file(name)

    def _file(self, name: str) -> Response:
        return Response(self._assets[name], media_type=UI_FILES[name], headers=_UI_HEADERS)


def _promotion(body: bytes, model_id: ModelId) -> tuple[int, str]:
    usage = f'promote takes {{"version": 2, "alias": "{DEFAULT_ALIAS}"}} (alias optional)'
    try:
        doc = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"request body is not valid JSON; {usage}") from None
    if not isinstance(doc, dict) or set(doc) - {"version", "alias"}:
        raise InvalidRequest(usage)
    version, alias = doc.get("version"), doc.get("alias", DEFAULT_ALIAS)
    text = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    if not isinstance(text, str) or not is_version(text):
        raise InvalidRequest(f"version must be a version number of model {model_id}; {usage}")
    if not isinstance(alias, str) or not is_alias(alias):
        raise InvalidRequest(
            f"alias {str(alias)[:64]!r} is not an alias name (a letter, then letters, digits, "
            f"'_' or '-'); {usage}"
        )
    return int(text), alias


def _read_ui() -> dict[str, bytes]:
    folder = importlib.resources.files("tenantserve") / "ui"
    return {name: (folder / name).read_bytes() for name in UI_FILES}


def tenants_document(tenants: list[TenantStatus]) -> dict[str, Any]:
    """The ``/v1/tenants`` body (docs/status.md): one row a tenant, by name."""
    return {
        "tenants": [
            {
                "tenant": t.tenant,
                "models": t.models,
                "bytes": t.nbytes,
                "memory_cap_bytes": t.memory_cap_bytes,
                "in_flight": t.in_flight,
                "requests": t.requests,
                "errors": t.errors,
                "rejected": t.rejected,
                "last_request_s": None if t.last_request_s is None else round(t.last_request_s, 3),
                "limits": {
                    "rate_per_s": t.limits.rate_per_s,
                    "burst": t.limits.bucket_size if t.limits.rate_per_s else None,
                    "max_concurrent": t.limits.max_concurrent,
                },
            }
            for t in tenants
        ]
    }


def status_document(status: ServerStatus, *, version: str, models: int) -> dict[str, Any]:
    """The ``/v1/status`` body (docs/status.md): at most ``models`` resident models, most
    recently used first."""
    act = status.activity
    mem = status.memory
    window = act.window
    resident = sorted(status.models, key=lambda m: -m.last_used_s)
    return {
        "version": version,
        "ready": status.ready,
        "store": {
            "url": status.store_url,
            "ok": status.store_problem is None,
            "problem": status.store_problem,
        },
        "time_s": round(act.now_s, 3),
        "started_s": round(act.started_s, 3),
        "memory": {
            "budget_bytes": mem.budget_bytes,
            "used_bytes": mem.used_bytes,
            "pinned_bytes": mem.pinned_bytes,
            "shared_bytes": mem.shared_bytes,
            "free_bytes": max(0, mem.budget_bytes - mem.used_bytes),
        },
        "models_total": len(resident),
        "models": [
            {
                "id": m.model_id,
                "state": m.state,
                "bytes": m.nbytes,
                "pinned": m.pinned,
                "in_flight": m.in_flight,
                "hits": m.hits,
                "last_used_s": round(m.last_used_s, 3),
                "load_seconds": round(m.load_seconds, 6),
                "note": m.note,
            }
            for m in resident[:models]
        ],
        "totals": {name: getattr(act.totals, name) for name in act.totals.__slots__},
        "window": {
            "seconds": window.seconds,
            "requests": window.requests,
            "hits": window.hits,
            "misses": window.misses,
            "errors": window.errors,
            "rejected": window.rejected,
            "hit_ratio": _round(window.hit_ratio),
            "p50_s": _round(window.p50_s),
            "p95_s": _round(window.p95_s),
            "p99_s": _round(window.p99_s),
            "max_s": _round(window.max_s),
        },
        "series": {
            "bucket_s": act.bucket_s,
            "points": [
                {
                    "start_s": p.start_s,
                    "requests": p.requests,
                    "hits": p.hits,
                    "misses": p.misses,
                    "errors": p.errors,
                    "rejected": p.rejected,
                    "p50_s": _round(p.p50_s),
                    "p95_s": _round(p.p95_s),
                    "max_s": _round(p.max_s),
                }
                for p in act.series
            ],
        },
        "events": [
            {
                "seq": e.seq,
                "time_s": round(e.time_s, 3),
                "last_s": round(e.last_s, 3),
                "kind": e.kind,
                "model": e.model_id,
                "bytes": e.nbytes,
                "seconds": round(e.seconds, 6),
                "detail": e.detail,
                "count": e.count,
            }
            for e in act.events
        ],
        "hot": {
            "window_s": act.hot_window_s,
            "models": [_hot(h) for h in act.hot_models],
            "tenants": [_hot(h) for h in act.hot_tenants],
        },
    }


def _hot(entry: HotEntry) -> dict[str, Any]:
    return {
        "id": entry.key,
        "requests": entry.requests,
        "misses": entry.misses,
        "errors": entry.errors,
        "rejected": entry.rejected,
        "error_bound": entry.error_bound,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)
