"""The raw floor: the thinnest OIP v2 infer server we can write over preloaded ONNX sessions.

Every session is created before the port opens; one route decodes the OIP JSON with orjson,
runs the session on a thread pool sized to the cores and encodes with orjson. No cache, no
admission, no metrics, no validation past what keeps it from crashing: whatever tenantserve
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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


def build_floor_app(sessions: Mapping[str, Any], executor: Executor) -> Starlette:
    """The floor's ASGI app over already-created ``sessions``."""

    async def infer(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        session = sessions.get(model_id)
        if session is None:
            return _error(404, f"model {model_id!r} not found")
        try:
            doc = orjson.loads(await request.body())
            feeds = {
                t["name"]: np.asarray(t["data"], dtype=_DTYPES[t["datatype"]]).reshape(t["shape"])
                for t in doc["inputs"]
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _error(400, f"bad request: {exc}")
        loop = asyncio.get_running_loop()
        try:
            arrays = await loop.run_in_executor(executor, session.run, None, feeds)
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad shapes
            return _error(400, f"inference failed: {exc}")
        names = [o.name for o in session.get_outputs()]
        outputs = [
            {
                "name": n,
                "datatype": _NAMES.get(a.dtype, "FP32"),
                "shape": a.shape,
                "data": a.ravel(),
            }
            for n, a in zip(names, arrays, strict=True)
        ]
        body = orjson.dumps(
            {"model_name": model_id, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        return Response(body, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b"", status_code=200)

    return Starlette(
        routes=[
            Route("/v2/models/{model_id:path}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready, methods=["GET"]),
            Route("/v2/health/live", ready, methods=["GET"]),
        ]
    )


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


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")
