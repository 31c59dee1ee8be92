"""The OpenAPI 3.1 document of our routes, written by hand so it states the wire contract exactly.

Model ids may hold ``/`` but an OpenAPI path parameter may not, so ``{model_name}`` is
described as one segment: every id it admits is a valid id, which is what schemathesis needs.
Routes that need an API key (when the server has keys) say so with ``security`` and document
401 and 403; health, server metadata, ``/ping`` and this document are open.
tests/integration/test_fuzz_openapi.py holds the server to every status, header and body here.
"""

from __future__ import annotations

from typing import Any

from tenantserve.protocols.status_schema import management_paths, status_schemas

_SEGMENT = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
              "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
_INFER_ERRORS = (400, 404, 413, 429, 500, 503, 504, 507)
_MODEL_ERRORS = (400, 404, 429, 500, 503, 507)
_SECURITY_SCHEMES = {
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key of the server's key file: 'Authorization: Bearer <key>'",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
    "awsSigV4": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "AWS Signature Version 4 (boto3) with a key's AWS access key pair",
    },
}
_KEYED: list[dict[str, list[str]]] = [{name: []} for name in _SECURITY_SCHEMES]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    for status in errors:
        error = _json(_ref("Error"), "Error")
        if status in (429, 503):
            error["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
        if status == 401:
            error["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = error
    return responses


def _param(name: str, where: str = "path", pattern: str = _SEGMENT) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": {"type": "string", "pattern": pattern},
    }


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An open operation: no key needed, whatever the server's configuration."""
    return {"summary": summary, "responses": responses, "security": [], **extra}


def _keyed(operation: dict[str, Any], *, optional: bool = False) -> dict[str, Any]:
    """``operation`` behind API keys (when the server has them): 401 without a known key,
    403 for a key outside its scope or role. ``optional``: only with a server flag."""
    errors = _responses({}, 401, 403)
    del errors["200"]
    security = [{}, *_KEYED] if optional else _KEYED
    return {**operation, "security": security, "responses": {**operation["responses"], **errors}}


def _keyed_op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return _keyed(_op(summary, responses, **extra))


def _schemas() -> dict[str, Any]:
    spec_properties: dict[str, Any] = {
        "name": {"type": "string"},
        "datatype": {"enum": _DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer"}},
    }
    tensor_spec = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": spec_properties,
    }
    tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            **spec_properties,
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
    }
    strings = {"type": "array", "items": {"type": "string"}}
    model_ref = {
        "type": "object",
        "required": ["modelName", "modelUrl"],
        "properties": {"modelName": {"type": "string"}, "modelUrl": {"type": "string"}},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "TensorMetadata": tensor_spec,
        "InferInput": tensor,
        "InferOutput": tensor,
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "minItems": 1, "items": _ref("InferInput")},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "parameters": {"type": "object"},
                        },
                    },
                },
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": _ref("InferOutput")},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": strings,
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("TensorMetadata")},
            },
        },
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": strings,
            },
        },
        "RepositoryIndex": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "state"],
                "properties": {n: {"type": "string"} for n in ("name", "state", "reason")},
            },
        },
        "Invocation": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {"instances": {"type": "array", "minItems": 1}},
                },
                {"type": "object", "required": ["inputs"]},
                {"type": "array", "minItems": 1},
            ]
        },
        "Predictions": {"type": "object", "required": ["predictions"]},
        "LoadModel": {
            "type": "object",
            "required": ["model_name", "url"],
            "properties": {"model_name": {"type": "string"}, "url": {"type": "string"}},
        },
        "ModelRef": model_ref,
        "ModelUnloaded": {
            "type": "object",
            "required": ["modelName"],
            "properties": {"modelName": {"type": "string"}},
        },
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {
                "models": {"type": "array", "items": _ref("ModelRef")},
                "nextPageToken": {"type": ["string", "null"]},
            },
        },
    }


def _oip_paths() -> dict[str, Any]:
    name = _param("model_name")
    # A version number or an alias (docs/versions.md); "1" for a model without versions.
    version = _param("model_version", pattern="^([1-9][0-9]{0,8}|[A-Za-z][A-Za-z0-9_-]{0,63})$")
    metadata = _keyed_op("Model metadata", _responses(_json(_ref("ModelMetadata")), *_MODEL_ERRORS))
    ready = _keyed_op(
        "Model readiness: 200 when resident, 400 when not",
        _responses(_json({"type": "object"}), 400, 404),
    )
    infer = _keyed_op(
        "Run inference: JSON, or Triton's binary tensors (Inference-Header-Content-Length)",
        _responses(_json(_ref("InferResponse")), *_INFER_ERRORS),
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": _ref("InferRequest")}},
        },
    )
    paths: dict[str, Any] = {
        "/v2/health/live": {"get": _op("Liveness", _responses(_json({"type": "object"}), 503))},
        "/v2/health/ready": {"get": _op("Readiness", _responses(_json({"type": "object"}), 503))},
        "/v2": {"get": _op("Server metadata", _responses(_json(_ref("ServerMetadata"))))},
        "/v2/repository/index": {
            "post": _keyed_op(
                "Models in the store", _responses(_json(_ref("RepositoryIndex")), 400, 413, 503)
            )
        },
    }
    for prefix, params in (("", [name]), ("/versions/{model_version}", [name, version])):
        base = "/v2/models/{model_name}" + prefix
        paths[base] = {"get": {**metadata, "parameters": params}}
        paths[base + "/ready"] = {"get": {**ready, "parameters": params}}
        paths[base + "/infer"] = {"post": {**infer, "parameters": params}}
    for action in ("load", "unload"):
        paths[f"/v2/repository/models/{{model_name}}/{action}"] = {
            "post": _keyed_op(
                f"{action.title()} a model",
                _responses(_json({"type": "object"}), *_MODEL_ERRORS),
                parameters=[name],
            )
        }
    return paths


def _sagemaker_paths() -> dict[str, Any]:
    name = _param("model_name")
    # An id, optionally with @version or @alias (docs/versions.md).
    target = _param(
        "X-Amzn-SageMaker-Target-Model",
        "header",
        "^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}(@[A-Za-z0-9][A-Za-z0-9_-]{0,63})?$",
    )
    target["required"] = True
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": _ref("Invocation")},
            "text/csv": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    invoke = _responses(_json(_ref("Predictions")), 400, 404, 413, 424, 429, 500, 503, 507)
    return {
        "/ping": {"get": _op("Container health", _responses(_json({"type": "object"}), 503))},
        "/invocations": {
            "post": _keyed_op(
                "Invoke the target model", invoke, parameters=[target], requestBody=body
            )
        },
        "/endpoints/{endpoint_name}/invocations": {
            "post": _keyed_op(
                "InvokeEndpoint",
                invoke,
                parameters=[_param("endpoint_name"), target],
                requestBody=body,
            )
        },
        "/models": {
            "get": _keyed_op(
                "Loaded models, paged",
                _responses(_json(_ref("ModelList")), 400),
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {"name": "next_page_token", "in": "query", "schema": {"type": "string"}},
                ],
            ),
            "post": _keyed_op(
                "Load a model",
                _responses(_json(_ref("ModelRef")), 400, 404, 409, 413, 429, 500, 503, 507),
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": _ref("LoadModel")}},
                },
            ),
        },
        "/models/{model_name}": {
            "get": _keyed_op(
                "Describe a loaded model",
                _responses(_json(_ref("ModelRef")), 400, 404),
                parameters=[name],
            ),
            "delete": _keyed_op(
                "Unload a model",
                _responses(_json(_ref("ModelUnloaded")), 400, 404, 500, 503),
                parameters=[name],
            ),
        },
        "/models/{model_name}/invoke": {
            "post": _keyed_op("Invoke a model", invoke, parameters=[name], requestBody=body)
        },
    }


def _management_paths() -> dict[str, Any]:
    """The operator routes: ``/v1/…`` needs a ``manage`` key, the ``/ui/`` page is open."""
    paths = management_paths()
    for path, operations in paths.items():
        for method, operation in operations.items():
            keyed = path.startswith("/v1/")
            operations[method] = _keyed(operation) if keyed else {**operation, "security": []}
    return paths


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document; ``version`` is the server's package version."""
    metrics = {
        "description": "Prometheus text",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tenantserve", "version": version},
        "paths": {
            **_oip_paths(),
            **_sagemaker_paths(),
            # Keyed whenever keys are on, unless the server runs with --open-metrics.
            "/metrics": {"get": _keyed(_op("Prometheus metrics", {"200": metrics}), optional=True)},
            "/openapi.json": {"get": _op("This document", _responses(_json({"type": "object"})))},
            **_management_paths(),
        },
        "components": {
            "schemas": {**_schemas(), **status_schemas()},
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }
