"""Load, overload and timeouts on the real server (RELIABILITY 25-29, 38).

The load comes from a small asyncio HTTP/1.1 client (one event loop, hundreds of keep-alive
connections) that records every answer's status, ``Retry-After`` and latency, so each test can
say what every request got: nothing is left unanswered and every refusal says when to retry.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.clients import sagemaker_runtime
from fixtures.models import heavy_model
from fixtures.oip import infer, write_model
from fixtures.polling import until
from fixtures.server import ProcessServer, ThreadServer

SLOW = "slow/m"


def _body(rows: int = 1) -> bytes:
    data = np.linspace(-1, 1, rows * 16, dtype=np.float32).round(3).tolist()
    return json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": data}]}
    ).encode()


# -- a lean asyncio client that keeps every answer ---------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request: its status (0: the connection failed), ``Retry-After`` and latency."""

    target: str
    status: int
    retry_after: int | None
    latency_s: float


def _request(
    url: str,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> bytes:
    host = url.removeprefix("http://")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, int | None, bool]:
    """Send ``raw``, read the whole answer: (status, Retry-After, connection kept open)."""
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    await reader.readexactly(int(fields.get("content-length", "0")))
    retry = fields.get("retry-after")
    return (
        int(lines[0].split()[1]),
        int(retry) if retry else None,
        fields.get("connection") != "close",
    )


class Load:
    """Closed-loop workers and one-shot storms against one server, from one event loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        host, port = url.removeprefix("http://").split(":")
        self._host, self._port = host, int(port)
        self.answers: list[Answer] = []

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self._host, self._port)

    async def _one(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, target: str,
        raw: bytes,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:  # fmt: skip
        started = time.perf_counter()
        try:
            if conn is None:
                conn = await self._connect()
            status, retry, keep = await asyncio.wait_for(_exchange(*conn, raw), 60)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            status, retry, keep = 0, None, False
        self.answers.append(Answer(target, status, retry, time.perf_counter() - started))
        if not keep and conn is not None:
            conn[1].close()
            conn = None
        return conn

    async def closed_loop(
        self, workers: int, duration_s: float, pick: Callable[[], tuple[str, bytes]]
    ) -> None:
        """``workers`` clients, each sending ``pick()``'s request as soon as the last answered."""
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            conn = None
            while time.perf_counter() < deadline:
                target, raw = pick()
                conn = await self._one(conn, target, raw)
            if conn is not None:
                conn[1].close()

        await asyncio.gather(*(worker() for _ in range(workers)))

    async def storm(self, requests: list[tuple[str, bytes]]) -> None:
        """Every request at once, each on its own connection."""

        async def one(target: str, raw: bytes) -> None:
            conn = await self._one(None, target, raw)
            if conn is not None:
                conn[1].close()

        await asyncio.gather(*(one(target, raw) for target, raw in requests))


# -- scraping ---------------------------------------------------------------------------------

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(url: str) -> Series:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, tuple(sorted(labels.items()))), 0.0)


def _total(series: Series, name: str) -> float:
    return sum(value for (sample, _), value in series.items() if sample == name)


@contextmanager
def _scraping(url: str) -> Iterator[list[Series]]:
    """Scrape ``url`` continuously (about every 50 ms) while the block runs."""
    scrapes: list[Series] = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            scrapes.append(_scrape(url))
            stop.wait(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield scrapes
    finally:
        stop.set()
        thread.join(timeout=30)


def _p(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def _held(url: str, path: str, body: bytes) -> Iterator[socket.socket]:
    """A request sent on a raw socket and left open until the block ends."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    sock.sendall(_request(url, path, body))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(scope="module")
def slow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load-store")
    heavy_model(root / SLOW, layers=400, width=512)
    write_model(root / "calm" / "m", weight_floats=64, seed=1)
    write_model(root / "quick" / "m", weight_floats=64, seed=2)
    return root


# -- 25: a bounded overload sheds with Retry-After and recovers --------------------------------


def test_overload_sheds_with_retry_after_and_recovers_fully(
    slow_store: Path, start_process: Callable[..., ProcessServer]
) -> None:
    server = start_process(
        slow_store, "--threads", "1", "--max-in-flight", "8", "--queue-timeout-s", "0.5",
        "--preload", SLOW,
    )  # fmt: skip
    proc = psutil.Process(server.pid)
    raw = _request(server.url, f"/v2/models/{SLOW}/infer", _body(2))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        calm = [client.post(f"/v2/models/{SLOW}/infer", content=_body(2)) for _ in range(10)]
        assert {r.status_code for r in calm} == {200}
    threads_before, rss_before = proc.num_threads(), proc.memory_info().rss
    load = Load(server.url)
    with _scraping(server.url) as scrapes:
        asyncio.run(load.closed_loop(256, 4.0, lambda: (SLOW, raw)))
    statuses = [a.status for a in load.answers]
    admitted = [a.latency_s for a in load.answers if a.status == 200]
    shed = [a for a in load.answers if a.status == 503]
    assert set(statuses) == {200, 503}, sorted(set(statuses))  # nothing failed or was lost
    assert len(admitted) > 20
    assert len(shed) > 50
    assert all(a.retry_after is not None and a.retry_after >= 1 for a in shed)
    assert _p(admitted, 0.99) < 2.5, _p(admitted, 0.99)  # queue timeout 0.5 s + one predict
    assert statistics.median(a.latency_s for a in shed) < 1.0  # shed at once or at the timeout
    # Every 503 was counted as a rejection, with its reason.
    after = _scrape(server.url)
    assert _total(after, "tenantserve_rejected_requests_total") == len(shed)
    assert _value(after, "tenantserve_rejected_requests_total", reason="queue_full", tenant="slow")
    assert max(_value(s, "tenantserve_requests_in_flight") for s in scrapes) <= 8

    # Recovery: queues drain, and the server answers as it did before the burst.
    until(lambda: _value(_scrape(server.url), "tenantserve_requests_in_flight") == 0)
    depths = [v for (n, _), v in _scrape(server.url).items() if n == "tenantserve_queue_depth"]
    assert depths
    assert set(depths) == {0.0}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        again = []
        for _ in range(20):
            started = time.perf_counter()
            assert client.post(f"/v2/models/{SLOW}/infer", content=_body(2)).status_code == 200
            again.append(time.perf_counter() - started)
        assert client.get("/v2/health/ready").status_code == 200
    assert statistics.median(again) < 0.5
    assert proc.num_threads() <= threads_before + 4
    assert proc.memory_info().rss < rss_before + 200 * 2**20


# -- 26: one tenant's flood does not starve another ----------------------------------------------


def test_a_flooding_tenant_is_capped_and_others_keep_their_latency(
    slow_store: Path, start_process: Callable[..., ProcessServer]
) -> None:
    server = start_process(
        slow_store, "--threads", "2", "--tenant-max-concurrent", "4", "--max-in-flight", "64",
        "--preload", SLOW, "--preload", "calm/m",
    )  # fmt: skip
    flood = _request(server.url, f"/v2/models/{SLOW}/infer", _body(2))
    calm_latencies: list[float] = []
    calm_codes: list[int] = []
    stop = threading.Event()

    def calm() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                started = time.perf_counter()
                calm_codes.append(infer(client, "calm/m").status_code)
                calm_latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    load = Load(server.url)
    caller = threading.Thread(target=calm, daemon=True)
    with _scraping(server.url) as scrapes:
        caller.start()
        try:
            asyncio.run(load.closed_loop(48, 4.0, lambda: (SLOW, flood)))
        finally:
            stop.set()
            caller.join(timeout=30)
    flood_codes = {a.status for a in load.answers}
    refused = [a for a in load.answers if a.status == 429]
    assert flood_codes == {200, 429}, flood_codes
    assert len(refused) > 10
    assert all(a.retry_after is not None and a.retry_after >= 1 for a in refused)
    in_flight = [_value(s, "tenantserve_tenant_requests_in_flight", tenant="slow") for s in scrapes]
    assert max(in_flight) <= 4, max(in_flight)  # the tenant's cap held at every scrape
    assert max(in_flight) >= 2  # and the flood did reach it
    assert set(calm_codes) == {200}
    assert len(calm_latencies) > 10
    assert _p(calm_latencies, 0.99) < 1.0, _p(calm_latencies, 0.99)
    after = _scrape(server.url)
    assert _value(
        after, "tenantserve_rejected_requests_total", reason="tenant_concurrency", tenant="slow"
    ) == len(refused)
    assert (
        _value(
            after, "tenantserve_rejected_requests_total", reason="tenant_concurrency", tenant="calm"
        )
        == 0
    )


# -- 27: a storm of 1,000 first calls goes through a bounded load queue --------------------------


def test_a_storm_of_1000_first_calls_is_served_or_refused_fast(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    store = tmp_path / "store"
    ids = [f"tenant{i % 100:02d}/m{i:04d}" for i in range(1000)]
    for i, model_id in enumerate(ids):
        write_model(store / model_id, weight_floats=16, seed=i)
    server = start_process(store, "--max-concurrent-loads", "2", "--max-queued-loads", "32")
    requests: list[tuple[str, bytes]] = []
    body = _body(1)
    for i, model_id in enumerate(ids):
        if i % 2:
            requests.append((model_id, _request(server.url, f"/v2/models/{model_id}/infer", body)))
        else:
            target = {"X-Amzn-SageMaker-Target-Model": model_id}
            csv = ",".join(["0.5"] * 16).encode()
            raw = _request(server.url, "/invocations", csv, target, content_type="text/csv")
            requests.append((model_id, raw))
    load = Load(server.url)
    started = time.perf_counter()
    with _scraping(server.url) as scrapes:
        asyncio.run(load.storm(requests))
    storm_s = time.perf_counter() - started
    by_id = {a.target: a for a in load.answers}
    assert len(by_id) == 1000
    oip = [by_id[m] for i, m in enumerate(ids) if i % 2]
    sagemaker = [by_id[m] for i, m in enumerate(ids) if not i % 2]
    assert {a.status for a in oip} <= {200, 503}, {a.status for a in oip}
    assert {a.status for a in sagemaker} <= {200, 429}, {a.status for a in sagemaker}
    refused = [a for a in load.answers if a.status != 200]
    served = [a for a in load.answers if a.status == 200]
    assert len(served) >= 34  # at least the loads that ran and the ones that queued
    assert len(refused) > 100
    assert all(a.retry_after is not None and a.retry_after >= 1 for a in refused)
    assert statistics.median(a.latency_s for a in refused) < 5.0
    assert storm_s < 60
    load_depths = [_value(s, "tenantserve_queue_depth", queue="load") for s in scrapes]
    assert max(load_depths) <= 32, max(load_depths)
    after = _scrape(server.url)
    assert _total(after, "tenantserve_rejected_requests_total") == len(refused)
    assert _value(after, "tenantserve_queue_depth", queue="load") == 0
    # Refused callers that come back are served.
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v2/health/ready").status_code == 200
        for answer in random.Random(0).sample(refused, 10):
            assert infer(client, answer.target).status_code == 200


# -- 28: a deadline that passes in the queue drops the request before inference ----------------


def test_a_request_past_its_deadline_is_dropped_before_inference(
    slow_store: Path, start_process: Callable[..., ProcessServer]
) -> None:
    server = start_process(
        slow_store, "--threads", "1", "--queue-timeout-s", "0.3", "--preload", SLOW,
        "--preload", "quick/m",
    )  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert infer(client, "quick/m").status_code == 200
        before = _scrape(server.url)
        with _held(server.url, f"/v2/models/{SLOW}/infer", _body(1500)) as held:
            until(lambda: _value(_scrape(server.url), "tenantserve_requests_in_flight") == 1)
            late = [infer(client, "quick/m") for _ in range(5)]
            assert held.recv(12).endswith(b"200")
        until(lambda: _value(_scrape(server.url), "tenantserve_requests_in_flight") == 0)
        after = _scrape(server.url)
    assert [r.status_code for r in late] == [503] * 5
    assert all(int(r.headers["Retry-After"]) >= 1 for r in late)
    timeouts = ("tenantserve_rejected_requests_total", "reason", "timeout")
    assert _value(after, timeouts[0], reason=timeouts[2], tenant="quick") == 5
    # Only the held request ran a prediction: the five late ones never reached the model.
    ran = after[("tenantserve_inference_seconds_count", ())]
    assert ran - before[("tenantserve_inference_seconds_count", ())] == 1


# -- 29: clients that leave free their slot and leave no task behind -----------------------------


def _server_tasks(server: ThreadServer) -> int:
    """Tasks alive on the server's event loop (not counting the one that counts)."""
    loop = server.server.servers[0].get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=10)


def test_clients_that_disconnect_free_their_slots_and_leave_no_tasks(
    slow_store: Path, start_server: Callable[..., ThreadServer]
) -> None:
    server = start_server(
        slow_store, threads=1, queue_timeout_s=60, preload=(SLOW, "quick/m"), max_in_flight=64
    )
    url = server.url
    assert httpx.post(f"{url}/v2/models/quick/m/infer", content=_body(1)).status_code == 200
    idle_tasks = _server_tasks(server)
    fds_before = psutil.Process().num_fds()
    with _held(url, f"/v2/models/{SLOW}/infer", _body(1500)) as held:
        until(lambda: _value(_scrape(url), "tenantserve_requests_in_flight") == 1)
        host, port = url.removeprefix("http://").split(":")
        leavers = [socket.create_connection((host, int(port))) for _ in range(30)]
        for i, sock in enumerate(leavers):
            model = SLOW if i % 2 else "quick/m"
            sock.sendall(_request(url, f"/v2/models/{model}/infer", _body(1)))
        until(lambda: _value(_scrape(url), "tenantserve_requests_in_flight") == 31)
        for sock in leavers:
            sock.close()
        # Their slots and queue places free up while the held request still runs.
        until(lambda: _value(_scrape(url), "tenantserve_requests_in_flight") == 1)
        assert _value(_scrape(url), "tenantserve_queue_depth", queue="predict") == 0
        assert held.recv(12).endswith(b"200")
    until(lambda: _value(_scrape(url), "tenantserve_requests_in_flight") == 0)
    series = _scrape(url)
    assert _value(series, "tenantserve_invocations_total", protocol="oip", code="499") == 30
    until(lambda: _server_tasks(server) <= idle_tasks, timeout_s=10)
    assert psutil.Process().num_fds() <= fds_before + 2


# -- 38: boto3 retries a loading model a bounded number of times -------------------------------


def test_boto3_retries_model_not_ready_a_bounded_number_of_times(
    slow_store: Path, start_process: Callable[..., ProcessServer]
) -> None:
    # A first call never waits for its load, and loads start at most every 5 s: while the
    # second model's load waits its turn, every call for it is "still loading".
    server = start_process(slow_store, "--max-loads-per-s", str(1 / 5), env={
        "TENANTSERVE_LOAD_WAIT_S": "0.000001",
    })  # fmt: skip

    def client(**retries: Any) -> Any:
        return sagemaker_runtime(server.url, retries=retries)

    def invoke(target: str, **retries: Any) -> Any:
        return client(**retries).invoke_endpoint(
            EndpointName="local", TargetModel=target, ContentType="text/csv", Body="0.5," * 15 + "0"
        )

    def not_ready() -> float:
        return _value(_scrape(server.url), "tenantserve_invocations_total", protocol="sagemaker",
                      code="429")  # fmt: skip

    with pytest.raises(client().exceptions.ModelNotReadyException):
        invoke("calm/m", mode="standard", max_attempts=1)  # starts the first load
    until(lambda: httpx.get(f"{server.url}/v2/models/calm/m/ready").status_code == 200)
    before = not_ready()
    # boto3's default ("legacy") mode retries HTTP 429; total_max_attempts bounds it.
    with pytest.raises(client().exceptions.ModelNotReadyException) as caught:
        invoke("quick/m", mode="legacy", total_max_attempts=3)
    assert not_ready() - before == 3
    headers = caught.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert int(headers["retry-after"]) >= 1
    # Standard and adaptive modes do not retry it at all: one call, one answer.
    with pytest.raises(client().exceptions.ModelNotReadyException):
        invoke("quick/m", mode="standard", max_attempts=5)
    assert not_ready() - before == 4
    # Once the load has had its turn, the same call succeeds.
    until(lambda: httpx.get(f"{server.url}/v2/models/quick/m/ready").status_code == 200)
    assert (
        invoke("quick/m", mode="standard", max_attempts=1)["ResponseMetadata"]["HTTPStatusCode"]
        == 200
    )
