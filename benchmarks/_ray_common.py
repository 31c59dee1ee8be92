"""What the Ray benchmarks share: a Zipf trace, a closed loop of lean HTTP clients, what it saw.

``bench_ray.py`` (tenantserve on Ray Serve) and ``bench_ray_multiplex.py`` (tenantserve against
Ray Serve's own model multiplexing) import these, as siblings on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tenantserve.tools.bench.http import Pool, ProtocolError, Watched, build_request

FEATURES = 16
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                    "data": [0.5] * FEATURES}]}  # fmt: skip


@dataclass
class Call:
    model_id: str
    started_s: float
    seconds: float
    status: int
    cache: str
    replica: str


@dataclass
class Run:
    """What one configuration did with the trace."""

    name: str
    calls: list[Call]
    wall_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> list[Call]:
        return [c for c in self.calls if c.status == 200]

    @property
    def hit_ratio(self) -> float:
        ok = self.ok
        return sum(c.cache == "hit" for c in ok) / len(ok) if ok else float("nan")

    @property
    def rate(self) -> float:
        return len(self.ok) / self.wall_s if self.wall_s else float("nan")

    def pct(self, q: float) -> float:
        return percentile([c.seconds for c in self.ok], q)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def zipf_trace(ids: Sequence[str], requests: int, s: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    order = list(ids)
    rng.shuffle(order)  # popularity independent of tenant and size
    weights = [1 / (rank + 1) ** s for rank in range(len(order))]
    return rng.choices(order, weights=weights, k=requests)


async def drive(
    url: str,
    trace: Sequence[str],
    concurrency: int,
    *,
    duration_s: float | None = None,
    headers: Callable[[str], Mapping[str, str]] | None = None,
    cache_header: str = "x-tenantserve-cache",
    replica_header: str = "x-tenantserve-replica",
    error_bodies: dict[int, str] | None = None,
    client_cpu: list[float] | None = None,
) -> tuple[list[Call], float]:
    """Replay ``trace`` with ``concurrency`` clients in a closed loop; every call recorded.

    With ``duration_s`` clients stop taking new requests once it has passed (those in flight
    finish and count); ``headers`` gives each model's extra request headers; ``error_bodies``
    gets the first body answered with each status other than 200; ``client_cpu`` gets this
    process's CPU seconds for the run.

    The client is the suite's (:mod:`tenantserve.tools.bench.http`: pre-built requests, heads
    read for three headers): httpx spent 1.7 ms of CPU a request here, a quarter of a 2-core
    box at 300 req/s, taken from the server it measured.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = orjson.dumps(BODY)
    raw = {
        model_id: build_request(
            f"{host}:{port}",
            f"/v2/models/{model_id}/infer",
            body,
            "application/json",
            headers(model_id) if headers is not None else None,
        )
        for model_id in set(trace)
    }
    watched = Watched(cache_header.lower().encode(), replica_header.lower().encode())
    pool = Pool(host, port, limit=concurrency, watched=watched)
    queue = list(reversed(trace))
    calls: list[Call] = []
    deadline = float("inf")  # set as the clients start

    async def worker() -> None:
        while queue and time.perf_counter() < deadline:
            model_id = queue.pop()
            started = time.perf_counter()
            try:
                conn = await pool.acquire()
                try:
                    reply = await conn.request(raw[model_id], timeout_s=120)
                finally:
                    pool.release(conn)
                status, cache, replica = reply.status, reply.cache or "", reply.replica or "-"
            except (ProtocolError, TimeoutError, OSError) as exc:
                status, cache, replica = 599, "", "-"
                if error_bodies is not None:
                    error_bodies.setdefault(status, repr(exc)[:160])
            else:
                if status != 200 and error_bodies is not None:
                    error_bodies.setdefault(status, reply.error.decode("utf-8", "replace")[:160])
            calls.append(
                Call(model_id, started, time.perf_counter() - started, status, cache, replica)
            )

    cpu = time.process_time()
    began = time.perf_counter()
    deadline = began + duration_s if duration_s is not None else float("inf")
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        pool.close()
    if client_cpu is not None:
        client_cpu.append(time.process_time() - cpu)
    return calls, time.perf_counter() - began


def wait_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def replica_metrics(
    url: str, names: Sequence[str], replicas: int, tries: int
) -> dict[str, tuple[float, ...]]:
    """Each tenantserve process's unlabelled ``names`` (NaN when absent), from its own
    ``/metrics`` (through a proxy, each answer says its replica), until ``replicas`` answered
    or ``tries`` ran out."""
    seen: dict[str, tuple[float, ...]] = {}
    for _ in range(tries):
        response = httpx.get(f"{url}/metrics", timeout=30)
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if not sample.labels
        }
        replica = response.headers.get("x-tenantserve-replica", "process")
        seen[replica] = tuple(values.get(name, float("nan")) for name in names)
        if len(seen) >= replicas:
            break
    return seen
