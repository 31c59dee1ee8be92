"""The raw floor server: OIP v2 infer over preloaded sessions, and the load generator against it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
from rich.console import Console
from starlette.testclient import TestClient

from tenantserve.tools.bench import harness, loadgen, trace_kinds
from tenantserve.tools.bench.floor import build_floor_app, load_sessions, local_model_ids
from tenantserve.tools.bench.loadgen import LoadSpec
from tenantserve.tools.bench.servers import served_floor
from tenantserve.tools.bench.traces import Trace, TraceRequest
from tenantserve.tools.fleet.synth import write_fleet


def _fleet(tmp_path: Path, models: int = 3) -> tuple[Path, list[str]]:
    store = tmp_path / "store"
    return store, write_fleet(store, models=models, size_bytes=40_000, seed=1)


def test_local_model_ids_skip_temporary_folders(tmp_path: Path) -> None:
    store, ids = _fleet(tmp_path)
    (store / "tenant-000" / ".model-0009.tmp").mkdir()
    (store / "tenant-000" / ".model-0009.tmp" / "model.onnx").write_bytes(b"half")
    assert local_model_ids(store) == sorted(ids)


def test_floor_answers_as_the_session_does(tmp_path: Path) -> None:
    store, ids = _fleet(tmp_path)
    sessions = load_sessions(store)
    assert sorted(sessions) == sorted(ids)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
    body = {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}
        ]
    }
    with ThreadPoolExecutor(2) as pool, TestClient(build_floor_app(sessions, pool)) as client:
        response = client.post(f"/v2/models/{ids[1]}/infer", content=orjson.dumps(body))
        assert response.status_code == 200
        (output,) = response.json()["outputs"]
        expected = sessions[ids[1]].run(None, {"input": x})[0]
        assert output["name"] == "output"
        assert output["shape"] == [2, 4]
        assert np.allclose(np.array(output["data"]).reshape(2, 4), expected, atol=1e-6)
        assert client.post("/v2/models/nobody/m/infer", content=b"{}").status_code == 404
        assert client.post(f"/v2/models/{ids[0]}/infer", content=b"not json").status_code == 400
        bad_shape = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
        }
        bad = client.post(f"/v2/models/{ids[0]}/infer", content=orjson.dumps(bad_shape))
        assert bad.status_code == 400
        assert client.get("/v2/health/ready").status_code == 200


def test_loadgen_against_the_floor_falls_back_to_first_seen(tmp_path: Path) -> None:
    store, ids = _fleet(tmp_path)
    trace = Trace(tuple(TraceRequest(i * 0.01, ids[i % 2]) for i in range(30)))
    with served_floor(store, log_path=tmp_path / "floor.log", threads=1) as floor:
        assert loadgen.warm_up(floor.url, ids) == 0
        assert loadgen.warm_up(floor.url, ["nobody/none"]) == 1
        spec = LoadSpec(floor.url, concurrency=1, duration_s=30, max_requests=30)
        fresh = loadgen.replay(trace, spec, server_pid=floor.pid, label="fresh")
        known = loadgen.replay(trace, spec, server_pid=floor.pid, resident=ids)
    assert fresh.classification == "first-seen"
    assert len(fresh.outcomes) == 30
    assert [o.model_id for o in fresh.outcomes if o.cold] == [ids[0], ids[1]]
    assert not any(o.cold for o in known.outcomes)
    assert all(o.status == 200 for o in fresh.outcomes + known.outcomes)
    assert fresh.samples[-1].rss_bytes
    assert fresh.samples[-1].metrics == {}  # the floor has no /metrics


def test_interleaved_slices_continue_the_trace_and_join(tmp_path: Path) -> None:
    store, ids = _fleet(tmp_path)
    trace = trace_kinds.zipf(ids, rate=100, duration_s=3, seed=4)
    console = Console(quiet=True)
    with served_floor(store, log_path=tmp_path / "floor.log", threads=1) as floor:
        target = harness.Target("floor", floor.url, floor.pid)
        closed = LoadSpec("", concurrency=1, duration_s=60, max_requests=30)
        (joined,) = harness.interleave(console, [target], trace, closed, rounds=3)
        opened = LoadSpec("", duration_s=1.5)
        (windows,) = harness.interleave(console, [target], trace, opened, rounds=3)
    assert joined.meta["slices"] == 3
    assert [o.model_id for o in joined.outcomes] == [r.model_id for r in trace.requests[:30]]
    times = [o.t_s for o in joined.outcomes]
    assert times == sorted(times)
    assert joined.label == "floor"
    assert len(windows.outcomes) == sum(r.t_s < 1.5 for r in trace)
    assert all(o.status == 200 for o in joined.outcomes + windows.outcomes)
