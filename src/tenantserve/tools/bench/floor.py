"""The raw floor: the thinnest OIP v2 infer server we can write over preloaded ONNX sessions.

Every session is created before the port opens; a plain ASGI function (no router, no
middleware) decodes the OIP JSON with orjson, runs the session on a thread pool sized to the
cores and encodes with orjson. No cache, no admission, no metrics, no validation past what
keeps it from crashing: whatever tenantserve
costs on top of this is the price of its features, which is what a report states as a ratio.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def load_sessions(store: Path) -> dict[str, Any]:
    """One ONNX Runtime session per ``<id>/model.onnx`` under ``store``, keyed by model id.

    Sessions get one intra-op and one inter-op thread, as tenantserve's do, so the two servers
    run the same kernels and differ only in what wraps them.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return {
        model_id: ort.InferenceSession(
            str(store / model_id / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for model_id in local_model_ids(store)
    }


def local_model_ids(store: Path) -> list[str]:
    """Ids of the ONNX model folders (``<id>/model.onnx``) in a local store, sorted."""
    ids = []
    for path in store.rglob("model.onnx"):
        model_id = path.parent.relative_to(store).as_posix()
        # Dot-names are writers' temporary folders (fleet.synth), never models.
        if model_id != "." and not any(p.startswith(".") for p in model_id.split("/")):
            ids.append(model_id)
    return sorted(ids)


def build_floor_app(sessions: Mapping[str, Any], executor: Executor) -> ASGIApp:
    """The floor's ASGI app over already-created ``sessions``: plain ASGI, no router, no
    middleware; one path test, the body read, orjson in and out, ``session.run`` on
    ``executor``."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path: str = scope["path"]
        if scope["method"] == "GET" and path in ("/v2/health/ready", "/v2/health/live"):
            await _answer(send, 200, b"")
            return
        if scope["method"] != "POST" or not path.startswith(_PREFIX) or not path.endswith(_INFER):
            await _answer(send, 404, orjson.dumps({"error": "not found"}))
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        model_id = path[len(_PREFIX) : -len(_INFER)]
        status, payload = await _infer(sessions.get(model_id), model_id, body, executor)
        await _answer(send, status, payload)

    return app


_PREFIX = "/v2/models/"
_INFER = "/infer"
_JSON = [(b"content-type", b"application/json")]


async def _infer(session: Any, model_id: str, body: bytes, executor: Executor) -> tuple[int, bytes]:
    if session is None:
        return 404, orjson.dumps({"error": f"model {model_id!r} not found"})
    try:
        doc = orjson.loads(body)
        feeds = {
            t["name"]: np.asarray(t["data"], dtype=_DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in doc["inputs"]
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        return 400, orjson.dumps({"error": f"bad request: {exc}"})
    loop = asyncio.get_running_loop()
    try:
        arrays = await loop.run_in_executor(executor, session.run, None, feeds)
    except Exception as exc:  # onnxruntime raises its own untyped errors on bad shapes
        return 400, orjson.dumps({"error": f"inference failed: {exc}"})
    names = [o.name for o in session.get_outputs()]
    outputs = [
        {"name": n, "datatype": _NAMES.get(a.dtype, "FP32"), "shape": a.shape, "data": a.ravel()}
        for n, a in zip(names, arrays, strict=True)
    ]
    payload = {"model_name": model_id, "outputs": outputs}
    return 200, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_floor(store: Path, *, host: str, port: int, threads: int | None = None) -> None:
    """Load every model under ``store``, then serve them on ``host:port`` until interrupted."""
    import uvicorn

    sessions = load_sessions(store)
    if not sessions:
        raise ValueError(f"no <id>/model.onnx under {store}")
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as executor:
        uvicorn.run(
            build_floor_app(sessions, executor),
            host=host,
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
        )
