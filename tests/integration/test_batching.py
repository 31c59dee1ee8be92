"""Dynamic batching against a real server: batched answers equal batch 1, per request.

One predict thread is held by a slow run while clients send requests concurrently, so they
queue and run as batches (the ``tenantserve_batch_size`` histogram proves batches formed):
numeric requests of one model, and MiniLM tickets of three tenants on one shared encoder
(``tenantserve_batch_models`` proves tenants shared a run). Every answer, over OIP HTTP, gRPC
and SageMaker, equals the one the same request got alone, within 1e-5. A batch past the
predict timeout answers each of its requests 504; a request whose client left leaves its batch;
a tenant flooding a shared base does not take every slot of a batch from a quieter one.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from prometheus_client.parser import text_string_to_metric_families

from fixtures.clients import sagemaker_runtime
from fixtures.fleets import per_macro
from fixtures.models import find_datasets, heavy_model, make_model
from fixtures.polling import until
from fixtures.server import ThreadServer, free_port
from tenantserve.tools.fleet.build import build_fleet
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.sources import plan_banking77

TOLERANCE = 1e-5
TENANTS = 3
TRAIN_PER_MACRO = 6
NUMERIC = "num/model"
HEAVY = "slow/heavy"  # holds the one predict thread while the test's requests queue
OTHER_HEAVY = "slow/other"
BLOCK_ROWS = 2048  # seconds of one core (about 2.5 ms a row)
ENDLESS_ROWS = 16_384  # tens of seconds: only a stopped run ends soon
CLIENTS = 12


@dataclasses.dataclass(frozen=True)
class Store:
    root: Path
    text_ids: tuple[str, ...]
    tickets: tuple[str, ...]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    plans = plan_banking77(find_datasets(), tenants=TENANTS, seed=0)
    small = [
        dataclasses.replace(
            plan, train=per_macro(plan.train, TRAIN_PER_MACRO), holdout=plan.holdout[:8]
        )
        for plan in plans
    ]
    root = tmp_path_factory.mktemp("batching-store")
    built = build_fleet(small, kind="minilm", publisher=open_publisher(str(root)), seed=0)
    make_model(root / NUMERIC, size_bytes=200_000, seed=3)
    heavy_model(root / HEAVY)
    heavy_model(root / OTHER_HEAVY)
    rows = [row.text for plan in plans for row in plan.holdout[:20]]
    # Tickets of very different lengths, so batches pad short ones.
    tickets = tuple(" ".join(t.split()) for t in random.Random(1).sample(rows, 24))
    return Store(root, tuple(b.model_id for b in built), tickets)


@pytest.fixture
def server(start_server: Callable[..., ThreadServer], store: Store) -> ThreadServer:
    grpc_port = free_port()
    server = start_server(
        store.root, threads=1, max_batch_size=8, grpc_port=grpc_port,
        memory_budget=1024**3, preload=(*store.text_ids, NUMERIC, HEAVY),
    )  # fmt: skip
    server.grpc_address = f"127.0.0.1:{grpc_port}"  # type: ignore[attr-defined]
    return server


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def _numeric_body(seed: int) -> dict[str, Any]:
    rows = 1 + seed % 3
    data = np.random.default_rng(seed).standard_normal((rows, 16)).round(4).tolist()
    return {"inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": data}]}


def _text_body(tickets: list[str]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "text", "shape": [len(tickets), 1], "datatype": "BYTES", "data": tickets}
        ]
    }


def _oip(url: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}/v2/models/{model_id}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def _sagemaker(url: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    data = body["inputs"][0]["data"]
    client = sagemaker_runtime(url)
    payload = json.dumps({"instances": data}).encode()
    response = client.invoke_endpoint(
        EndpointName="local", TargetModel=model_id, ContentType="application/json", Body=payload
    )
    answer: dict[str, Any] = json.loads(response["Body"].read())
    return answer


def _grpc(address: str, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    spec = body["inputs"][0]
    client = tgrpc.InferenceServerClient(address)
    try:
        tensor = tgrpc.InferInput(spec["name"], spec["shape"], spec["datatype"])
        dtype = object if spec["datatype"] == "BYTES" else np.float32
        tensor.set_data_from_numpy(np.array(spec["data"], dtype=dtype).reshape(spec["shape"]))
        result = client.infer(model_id, [tensor])
        names = [o.name for o in result.get_response().outputs]
        return {n: np.asarray(result.as_numpy(n)).tolist() for n in names}
    finally:
        client.close()


def _assert_close(got: Any, want: Any, where: str) -> None:
    """Numbers within TOLERANCE, everything else (labels, shapes, keys) exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict), where
        assert set(got) == set(want), where
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), where
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert abs(got - want) <= TOLERANCE, f"{where}: {got} != {want}"
    else:
        assert got == want, where


def _hold_the_thread(
    pool: ThreadPoolExecutor,
    server: ThreadServer,
    model_id: str,
    rows: int = BLOCK_ROWS,
    client_timeout_s: float = 120,
) -> Any:
    ask = {"inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32",
                       "data": [0.5] * (rows * 16)}]}  # fmt: skip
    hits = "tenantserve_model_cache_hits_total"  # the model is preloaded: a lease is a hit
    before, leased = (
        _metric(server.url, "tenantserve_requests_in_flight"),
        _metric(server.url, hits),
    )
    held = pool.submit(httpx.post, f"{server.url}/v2/models/{model_id}/infer", json=ask,
                       timeout=client_timeout_s)  # fmt: skip
    until(lambda: _metric(server.url, "tenantserve_requests_in_flight") == before + 1)
    # Admitted is counted before the body is read; the lease comes after it is parsed. Until
    # then a request sent next could take the thread first (seen once on a loaded box).
    until(lambda: _metric(server.url, hits) > leased)
    time.sleep(0.3)  # its decode, then the idle thread (the run itself lasts seconds)
    return held


@pytest.mark.slow
def test_batched_answers_equal_batch_1_over_every_protocol(
    server: ThreadServer, store: Store
) -> None:
    grpc_address: str = server.grpc_address  # type: ignore[attr-defined]
    protocols: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
        "oip": lambda m, b: _oip(server.url, m, b),
        "sagemaker": lambda m, b: _sagemaker(server.url, m, b),
        "grpc": lambda m, b: _grpc(grpc_address, m, b),
    }
    asks: list[tuple[str, str, dict[str, Any]]] = []
    for protocol in protocols:
        for i in range(6):
            asks.append((protocol, NUMERIC, _numeric_body(i)))
        for i in range(8):
            tickets = list(store.tickets[i * 3 : i * 3 + 1 + i % 3])
            asks.append((protocol, store.text_ids[i % TENANTS], _text_body(tickets)))
    # Batch 1: each alone, one at a time, on an idle server.
    alone = [protocols[p](m, b) for p, m, b in asks]
    assert _metric(server.url, "tenantserve_batch_size_bucket", le="1.0") == _metric(
        server.url, "tenantserve_batch_size_count"
    )
    with ThreadPoolExecutor(CLIENTS + 1) as pool:
        order = random.Random(0).sample(range(len(asks)), len(asks))
        held = _hold_the_thread(pool, server, HEAVY)
        futures = {i: pool.submit(protocols[asks[i][0]], asks[i][1], asks[i][2]) for i in order}
        assert held.result().status_code == 200
        batched = {i: future.result() for i, future in futures.items()}
    for i, (protocol, model_id, _) in enumerate(asks):
        _assert_close(batched[i], alone[i], f"{protocol} {model_id} ask {i}")
    runs = _metric(server.url, "tenantserve_batch_size_count")
    single = _metric(server.url, "tenantserve_batch_size_bucket", le="1.0")
    assert runs > single  # some runs answered several requests
    assert _metric(server.url, "tenantserve_batch_size_sum") == len(asks) * 2 + 1
    # Some run held tickets of more than one tenant, on their one encoder.
    assert _metric(server.url, "tenantserve_batch_models_count") > _metric(
        server.url, "tenantserve_batch_models_bucket", le="1.0"
    )


@pytest.mark.slow
def test_a_batch_past_the_timeout_answers_each_request_504(
    start_server: Callable[..., ThreadServer], store: Store
) -> None:
    server = start_server(store.root, threads=1, predict_timeout_s=1.0,
                          preload=(HEAVY, OTHER_HEAVY))  # fmt: skip
    endless = ENDLESS_ROWS
    with ThreadPoolExecutor(4) as pool:
        held = _hold_the_thread(pool, server, HEAVY, endless)  # itself 504 at 1 s
        ask = {"inputs": [{"name": "input", "shape": [endless, 16], "datatype": "FP32",
                           "data": [0.25] * (endless * 16)}]}  # fmt: skip
        url = f"{server.url}/v2/models/{OTHER_HEAVY}/infer"
        batched = [pool.submit(httpx.post, url, json=ask, timeout=120) for _ in range(2)]
        answers = [future.result() for future in batched]
        assert held.result().status_code == 504
    for answer in answers:
        assert answer.status_code == 504
        assert answer.json()["error"] == f"model {OTHER_HEAVY} did not answer within 1 s"
    # The two ran as one batch (the blocker alone).
    assert _metric(server.url, "tenantserve_batch_size_bucket", le="2.0") == 2
    assert _metric(server.url, "tenantserve_batch_size_sum") == 3


@pytest.mark.slow
def test_a_request_whose_client_left_leaves_its_batch(server: ThreadServer, store: Store) -> None:
    with ThreadPoolExecutor(4) as pool:
        # A run far longer than the test (tens of seconds on this box; a machine several times
        # faster once ran a block's 2,048 rows before the next client gave up), ended by its
        # own client leaving after 4 s: a run whose every caller left is stopped.
        held = _hold_the_thread(pool, server, HEAVY, ENDLESS_ROWS, client_timeout_s=4.0)
        # Admitted is counted before the body is read: give it time to be parsed and take the
        # thread, so the numeric requests queue behind it.
        time.sleep(1.0)
        url = f"{server.url}/v2/models/{NUMERIC}/infer"
        stays = pool.submit(httpx.post, url, json=_numeric_body(1), timeout=60)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=_numeric_body(2), timeout=0.3)  # gives up while queued
        with pytest.raises(httpx.ReadTimeout):
            held.result()
        assert stays.result().status_code == 200
    # The numeric batch ran with the one request still waiting, not the one that left.
    until(lambda: _metric(server.url, "tenantserve_batch_size_count") == 2)
    assert _metric(server.url, "tenantserve_batch_size_sum") == 2


@pytest.mark.slow
def test_a_flooding_tenant_does_not_take_every_slot_of_a_shared_batch(
    start_server: Callable[..., ThreadServer], store: Store
) -> None:
    server = start_server(store.root, threads=1, max_batch_size=4,
                          preload=(*store.text_ids, HEAVY))  # fmt: skip
    flood, quiet = store.text_ids[0], store.text_ids[1]
    done: dict[str, float] = {}

    def ask(name: str, model_id: str, ticket: str) -> None:
        _oip(server.url, model_id, _text_body([ticket]))
        done[name] = time.monotonic()

    with ThreadPoolExecutor(24) as pool:
        held = _hold_the_thread(pool, server, HEAVY)
        asks = [pool.submit(ask, f"flood{i}", flood, store.tickets[i]) for i in range(16)]
        until(lambda: _metric(server.url, "tenantserve_requests_in_flight") == 17)
        asks += [pool.submit(ask, f"quiet{i}", quiet, store.tickets[16 + i]) for i in range(2)]
        until(lambda: _metric(server.url, "tenantserve_requests_in_flight") == 19)
        assert held.result().status_code == 200
        for future in asks:
            future.result()
    # Batches of four run one after another on the one thread: the quiet tenant's two came
    # last but ran in the first (two slots each), not after the flood's sixteen.
    last_flood = max(t for name, t in done.items() if name.startswith("flood"))
    assert max(done["quiet0"], done["quiet1"]) < last_flood
    assert _metric(server.url, "tenantserve_batch_size_bucket", le="4.0") == _metric(
        server.url, "tenantserve_batch_size_count"
    )
