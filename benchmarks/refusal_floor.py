"""The refusal floor: bare uvicorn (uvloop, httptools) answering each model's first call 429 +
Retry-After at once and later ones 200, with no auth, no queue, no model.

Usage: ``python benchmarks/refusal_floor.py PORT``. bench_isolation.py sends its storm client
here too, on the same box under the same warm traffic: what a refusal costs the client and
the HTTP stack alone, beside what it costs through tenantserve.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import Receive, Scope, Send

_SEEN: set[bytes] = set()
_TARGET = b"x-amzn-sagemaker-target-model"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    headers = dict(scope["headers"])
    model = headers.get(_TARGET, scope["path"].encode())
    first = model not in _SEEN
    _SEEN.add(model)
    body = b'{"error":"refused: retry shortly"}' if first else b'{"outputs":[]}'
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if first:
        head.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": 429 if first else 200, "headers": head})
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop="uvloop",
        http="httptools",
    )  # fmt: skip
