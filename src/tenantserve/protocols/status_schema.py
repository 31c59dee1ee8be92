"""JSON Schema of ``/v1/status`` and the management paths, merged into ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_SEGMENT = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    # Every field is always present and nothing else is: the test holds the server to it.
    return {
        "type": "object",
        "required": sorted(properties),
        "additionalProperties": False,
        "properties": properties,
    }


_INT = {"type": "integer", "minimum": 0}
_NUM = {"type": "number", "minimum": 0}
_OPT_NUM = {"type": ["number", "null"], "minimum": 0}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def status_schemas() -> dict[str, Any]:
    """``components.schemas`` entries: ``Status`` and the objects it holds."""
    hot = _object(
        {
            "id": _STR,
            "requests": _INT,
            "misses": _INT,
            "errors": _INT,
            "rejected": _INT,
            "error_bound": _INT,
        }
    )
    counts = {"requests": _INT, "hits": _INT, "misses": _INT, "errors": _INT, "rejected": _INT}
    return {
        "Status": _object(
            {
                "version": _STR,
                "ready": _BOOL,
                "store": _object(
                    {"url": _STR, "ok": _BOOL, "problem": {"type": ["string", "null"]}}
                ),
                "time_s": _NUM,
                "started_s": _NUM,
                "memory": _ref("StatusMemory"),
                "models_total": _INT,
                "models": {"type": "array", "items": _ref("StatusModel")},
                "totals": _ref("StatusTotals"),
                "window": _ref("StatusWindow"),
                "series": _object(
                    {
                        "bucket_s": {"type": "number", "exclusiveMinimum": 0},
                        "points": {"type": "array", "items": _ref("StatusPoint")},
                    }
                ),
                "events": {"type": "array", "items": _ref("StatusEvent")},
                "hot": _object(
                    {
                        "window_s": _NUM,
                        "models": {"type": "array", "items": _ref("StatusHot")},
                        "tenants": {"type": "array", "items": _ref("StatusHot")},
                    }
                ),
            }
        ),
        "StatusMemory": _object(
            {
                "budget_bytes": _INT,
                "used_bytes": _INT,
                "pinned_bytes": _INT,
                "shared_bytes": _INT,
                "free_bytes": _INT,
            }
        ),
        "StatusModel": _object(
            {
                "id": _STR,
                "state": {"enum": ["loading", "ready"]},
                "bytes": _INT,
                "pinned": _BOOL,
                "in_flight": _INT,
                "hits": _INT,
                "last_used_s": _NUM,
                "load_seconds": _NUM,
                "note": _STR,
            }
        ),
        "StatusTotals": _object(
            {
                **counts,
                "loads": _INT,
                "evictions": _INT,
                "unloads": _INT,
                "load_failures": _INT,
            }
        ),
        "StatusWindow": _object(
            {
                "seconds": _NUM,
                **counts,
                "hit_ratio": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "p50_s": _OPT_NUM,
                "p95_s": _OPT_NUM,
                "p99_s": _OPT_NUM,
                "max_s": _OPT_NUM,
            }
        ),
        "StatusPoint": _object(
            {"start_s": _NUM, **counts, "p50_s": _OPT_NUM, "p95_s": _OPT_NUM, "max_s": _OPT_NUM}
        ),
        "StatusEvent": _object(
            {
                "seq": {"type": "integer", "minimum": 1},
                "time_s": _NUM,
                "last_s": _NUM,
                "kind": {"enum": ["load", "evict", "unload", "load_failed", "rejected"]},
                "model": _STR,
                "bytes": _INT,
                "seconds": _NUM,
                "detail": _STR,
                "count": {"type": "integer", "minimum": 1},
            }
        ),
        "StatusHot": hot,
        "PinResult": _object({"model": _STR, "pinned": _BOOL}),
        "Tenants": _object({"tenants": {"type": "array", "items": _ref("TenantRow")}}),
        "TenantRow": _object(
            {
                "tenant": _STR,
                "models": _INT,
                "bytes": _INT,
                "memory_cap_bytes": {"type": ["integer", "null"], "minimum": 0},
                "in_flight": _INT,
                "requests": _INT,
                "errors": _INT,
                "rejected": _INT,
                "last_request_s": {"type": ["number", "null"]},
                "limits": _object(
                    {
                        "rate_per_s": _NUM,
                        "burst": {"type": ["number", "null"]},
                        "max_concurrent": _INT,
                    }
                ),
            }
        ),
    }


def management_paths() -> dict[str, Any]:
    """``paths`` entries for ``/v1/status``, ``/v1/tenants``, pin / unpin and ``/ui/``."""
    error = {"content": {"application/json": {"schema": _ref("Error")}}}

    def errors(*codes: int) -> dict[str, Any]:
        return {str(code): {"description": "Error", **error} for code in codes}

    name = {"name": "model_name", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": _SEGMENT}}  # fmt: skip
    paths: dict[str, Any] = {
        "/v1/status": {
            "get": {
                "summary": "Memory, resident models, recent activity (docs/status.md)",
                "parameters": [
                    {
                        "name": "models",
                        "in": "query",
                        "description": "Most resident models listed, most recently used first",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10_000},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": _ref("Status")}},
                    },
                    **errors(400),
                },
            }
        },
        "/v1/tenants": {
            "get": {
                "summary": "Each tenant: models and bytes held, requests, limits, last use",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": _ref("Tenants")}},
                    }
                },
            }
        },
        "/ui/": {
            "get": {
                "summary": "The status page (HTML; polls /v1/status)",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    summaries = {
        "pin": "Pin a model: load it if needed and never evict it",
        "unpin": "Unpin a resident model: eviction may take it again",
    }
    for action, summary in summaries.items():
        codes = (400, 404, 429, 500, 503, 507) if action == "pin" else (400, 404)
        paths[f"/v1/models/{{model_name}}/{action}"] = {
            "post": {
                "summary": summary,
                "parameters": [name],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": _ref("PinResult")}},
                    },
                    **errors(*codes),
                },
            }
        }
    return paths
