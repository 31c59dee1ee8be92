"""Past capacity, `tenantserve serve` refuses at the HTTP layer: a request the server would
refuse anyway (every slot taken, the queue full) is answered 503 from its head alone, kept
alive, counted, and the requests already admitted are served."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from fixtures.models import heavy_model, make_model
from fixtures.oip import scrape
from fixtures.polling import until
from fixtures.server import ProcessServer

SLOW = "slow/heavy"


def _body(rows: int) -> bytes:
    data = np.linspace(-1, 1, rows * 16, dtype=np.float32).round(3).tolist()
    return json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": data}]}
    ).encode()


def test_a_full_server_refuses_from_the_request_head_and_serves_what_it_admitted(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    heavy_model(tmp_path / SLOW, layers=400, width=256)
    make_model(tmp_path / "calm" / "m", size_bytes=20_000)
    # One request in flight, four queued (max-in-flight x 4): the sixth is refused at once.
    server = start_process(
        tmp_path, "--max-in-flight", "1", "--threads", "1", "--preload", SLOW,
        "--queue-target-s", "0",  # this test holds a standing queue on purpose
    )  # fmt: skip
    slow = f"/v2/models/{SLOW}/infer"
    with ThreadPoolExecutor(5) as pool, httpx.Client(base_url=server.url, timeout=120) as client:
        held = [pool.submit(httpx.post, server.url + slow, content=_body(800), timeout=120)]
        until(lambda: scrape(client)["tenantserve_requests_in_flight"] == 1)
        held += [
            pool.submit(httpx.post, server.url + slow, content=_body(1), timeout=120)
            for _ in range(4)
        ]
        until(lambda: _queued(client) == 4, what="four requests queued for admission")
        refused = client.post(slow, content=_body(1))
        # Another tenant's newcomer still gets the slow tenant's newest waiter shed for it.
        calm = client.post("/v2/models/calm/m/infer", content=_body(1))
        statuses = sorted(f.result().status_code for f in held)
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "capacity" in refused.json()["error"]
    # Answered by the HTTP layer: uvicorn adds its date header to every app response only.
    assert "date" not in refused.headers
    assert calm.status_code == 200, calm.text
    assert statuses.count(503) == 1, statuses  # the slow tenant's newest, shed for calm
    assert statuses.count(200) == 4, statuses
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'tenantserve_rejected_requests_total{reason="queue_full",tenant="slow"} 2.0' in metrics


def _queued(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('tenantserve_queue_depth{queue="admission"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
