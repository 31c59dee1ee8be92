"""The load generator against a real ``tenantserve serve`` on loopback: counts and cold/warm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from fixtures.server import ProcessServer, free_port
from tenantserve.tools.bench import trace_kinds
from tenantserve.tools.bench.loadgen import LoadSpec, check_loopback, replay
from tenantserve.tools.bench.results import STATUS_CONNECTION_ERROR
from tenantserve.tools.bench.sampler import find_pid, parse_metrics
from tenantserve.tools.bench.traces import Trace, TraceRequest
from tenantserve.tools.fleet.synth import write_fleet

StartProcess = Callable[..., ProcessServer]


def _fleet(tmp_path: Path, *, models: int = 4, size_bytes: int = 40_000) -> tuple[Path, list[str]]:
    store = tmp_path / "store"
    return store, write_fleet(store, models=models, size_bytes=size_bytes, seed=2)


def _counter(url: str, name: str) -> float:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=10).text).get(name, 0.0)


def test_closed_loop_sends_the_trace_in_order_and_finds_cold_requests(
    tmp_path: Path, start_process: StartProcess
) -> None:
    store, ids = _fleet(tmp_path)
    server = start_process(store, "--memory-budget", "256MiB")
    trace = trace_kinds.zipf(ids, rate=100, duration_s=5, seed=1)
    spec = LoadSpec(server.url, concurrency=1, duration_s=60, max_requests=120)
    result = replay(trace, spec, server_pid=server.pid)

    assert [o.model_id for o in result.outcomes] == [r.model_id for r in trace.requests[:120]]
    assert all(o.status == 200 for o in result.outcomes)
    assert result.classification == "header"
    # One client, everything fits: a model's first request is its only cold one.
    firsts = list(dict.fromkeys(o.model_id for o in result.outcomes))
    assert [o.model_id for o in result.outcomes if o.cold] == firsts
    assert {o.cache for o in result.outcomes} == {"hit", "miss"}
    last = result.samples[-1]
    assert last.rss_bytes
    assert last.threads
    assert last.metrics["hits"] + last.metrics["misses"] == 120
    assert last.metrics["loaded_models"] == len(firsts)


def test_client_misses_match_the_server_counter_under_eviction(
    tmp_path: Path, start_process: StartProcess
) -> None:
    store, ids = _fleet(tmp_path, models=6, size_bytes=2_000_000)
    server = start_process(store, "--memory-budget", "9MB")  # room for about two models
    trace = trace_kinds.uniform(ids, rate=100, duration_s=5, seed=3)
    misses_before = _counter(server.url, "misses")
    # One client: the header (residency as a request arrives) and the counter (residency as its
    # lease is taken, after admission) can only differ when requests interleave.
    spec = LoadSpec(server.url, concurrency=1, duration_s=60, max_requests=150)
    result = replay(trace, spec, server_pid=server.pid)

    assert len(result.outcomes) == 150
    assert all(o.status == 200 for o in result.outcomes)
    client_misses = sum(o.cache == "miss" for o in result.outcomes)
    assert client_misses == _counter(server.url, "misses") - misses_before
    assert sum(o.cold for o in result.outcomes) == client_misses
    assert _counter(server.url, "evictions") > 0


def test_open_loop_keeps_trace_times_and_stops_at_the_duration(
    tmp_path: Path, start_process: StartProcess
) -> None:
    store, ids = _fleet(tmp_path, models=2)
    server = start_process(store)
    trace = Trace(tuple(TraceRequest(i * 0.02, ids[i % 2]) for i in range(100)))  # 2 s
    result = replay(trace, LoadSpec(server.url, duration_s=1.0), server_pid=server.pid)

    assert result.mode == "open"
    assert [o.t_s for o in result.outcomes] == [r.t_s for r in trace.requests[:50]]
    assert all(o.status == 200 for o in result.outcomes)
    capped = replay(trace, LoadSpec(server.url, duration_s=10, max_requests=7))
    assert len(capped.outcomes) == 7


def test_errors_are_recorded_by_status(tmp_path: Path, start_process: StartProcess) -> None:
    store, ids = _fleet(tmp_path, models=1)
    server = start_process(store)
    trace = Trace((TraceRequest(0.0, ids[0]), TraceRequest(0.01, "nobody/none")))
    result = replay(trace, LoadSpec(server.url, concurrency=1, duration_s=30, max_requests=4))
    assert [o.status for o in result.outcomes] == [200, 404, 200, 404]
    assert find_pid(server.url) == server.pid


def test_each_model_gets_its_own_body_when_given(
    tmp_path: Path, start_process: StartProcess
) -> None:
    store, ids = _fleet(tmp_path, models=2)
    server = start_process(store)
    trace = Trace((TraceRequest(0.0, ids[0]), TraceRequest(0.01, ids[1])))
    wrong = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2],
                                       "data": [0, 0]}]})  # fmt: skip
    spec = LoadSpec(server.url, concurrency=1, duration_s=30, max_requests=4)
    result = replay(trace, spec, bodies={ids[1]: wrong})  # ids[0]: the synthetic fleet's
    assert [o.status for o in result.outcomes] == [200, 400, 200, 400]


def test_an_unreachable_server_gives_connection_errors() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    trace = Trace((TraceRequest(0.0, "acme/m"),))
    result = replay(trace, LoadSpec(url, concurrency=2, duration_s=30, max_requests=5))
    assert [o.status for o in result.outcomes] == [STATUS_CONNECTION_ERROR] * 5
    assert result.samples[-1].rss_bytes is None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.9.9.9"])
def test_loopback_urls_pass(host: str) -> None:
    url = f"http://{host}:{free_port()}"
    check_loopback(url)  # raises ValueError for anything else (below)
    # And the load generator goes on to call it: nobody listens there, so a connection error.
    result = replay(
        Trace((TraceRequest(0.0, "a/b"),)), LoadSpec(url, concurrency=1, max_requests=1)
    )
    assert [o.status for o in result.outcomes] == [STATUS_CONNECTION_ERROR]


@pytest.mark.parametrize(
    "url", ["http://10.0.0.1:8080", "http://example.com", "http://0.0.0.0:80", "http://:80"]
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_loopback(url)
    with pytest.raises(ValueError, match="loopback"):
        replay(Trace((TraceRequest(0.0, "a/b"),)), LoadSpec(url, concurrency=1))
