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

from fixtures.models import heavy_model, make_model, slow_load_model
from fixtures.oip import scrape
from fixtures.polling import until
from fixtures.server import ProcessServer

SLOW = "slow/heavy"
STORM_KEY, OTHER_KEY, OPS_KEY = "storm-key-000000001", "other-key-000000001", "ops-key-0000000001"


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


def test_with_keys_a_first_call_the_load_queue_refuses_is_answered_from_its_head(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    slow_load_model(tmp_path / "storm" / "slow")
    make_model(tmp_path / "storm" / "next", size_bytes=20_000)
    keys = tmp_path / "keys.toml"
    keys.write_text(
        f'[[keys]]\nname = "storm"\nkey = "{STORM_KEY}"\nscopes = ["storm/*"]\n\n'
        f'[[keys]]\nname = "other"\nkey = "{OTHER_KEY}"\nscopes = ["other/*"]\n\n'
        f'[[keys]]\nname = "ops"\nkey = "{OPS_KEY}"\nscopes = ["*"]\nroles = ["metrics"]\n'
    )
    # One load slot and no queue: while the slow model loads, no other load may start.
    server = start_process(
        tmp_path, "--api-keys", str(keys), "--max-concurrent-loads", "1",
        "--max-queued-loads", "0",
    )  # fmt: skip
    own, other = {"X-Api-Key": STORM_KEY}, {"X-Api-Key": OTHER_KEY}
    ops = httpx.Client(base_url=server.url, timeout=30, headers={"X-Api-Key": OPS_KEY})
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=server.url, timeout=120) as client:
        slow = pool.submit(
            client.post, "/v2/models/storm/slow/infer", content=_body(1), headers=own
        )
        until(lambda: scrape(ops)["tenantserve_requests_in_flight"] == 1)
        refused = client.post("/v2/models/storm/next/infer", content=_body(1), headers=own)
        forbidden = client.post("/v2/models/storm/next/infer", content=_body(1), headers=other)
        anonymous = client.post("/v2/models/storm/next/infer", content=_body(1))
        assert slow.result().status_code == 200, slow.result().text
        served = client.post("/v2/models/storm/next/infer", content=_body(1), headers=own)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert "other loads are pending" in refused.json()["error"]
    assert "date" not in refused.headers  # answered by the HTTP layer, from the head
    # Callers whose key may not invoke the model learn nothing of its load: the usual answers.
    assert (forbidden.status_code, anonymous.status_code) == (403, 401)
    assert "date" in forbidden.headers
    assert served.status_code == 200, served.text
    metrics = ops.get("/metrics").text
    ops.close()
    assert 'tenantserve_rejected_requests_total{reason="load_queue_full",tenant="storm"} 1.0' in (
        metrics
    )
