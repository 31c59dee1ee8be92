"""Lifecycle on the real server: health while models load, predict timeouts, unload, reload
and SIGTERM (RELIABILITY cases 19, 30, 32-35)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from botocore.exceptions import ClientError
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from fixtures.clients import sagemaker_runtime
from fixtures.models import heavy_model, make_model
from fixtures.polling import until
from fixtures.server import ProcessServer, ThreadServer
from tenantserve.cli import app as cli_app

LIGHT = "life/light"
HEAVY = "life/heavy"  # slow to run: about 2.5 ms per row on one core
SLOW_LOAD = "life/slow-load"  # slow to load: its session takes seconds to build
GARBAGE = "life/garbage"
SLOW_LOAD_NODES = 60_000  # about 3.5 s to load on one idle core; each node adds 1
SLOW_LOAD_OUTPUT = 16 * (SLOW_LOAD_NODES + 0.5)  # for a row of 0.5s, as _body sends
# Slower still: its load must outlast the 3 s drain even on a fast machine (CI's 3.5 s one did not).
SLOWER_LOAD = "life/slower-load"
SLOWER_LOAD_NODES = 2 * SLOW_LOAD_NODES
HEAVY_RUN_ROWS = 1024  # a few seconds of one core: in flight while the test acts
ENDLESS_ROWS = 16_384  # about 40 s of one core: only a stopped run ends soon


def _slow_load_model(folder: Path, nodes: int = SLOW_LOAD_NODES) -> None:
    """``output`` = sum(``input`` + ``nodes``): a chain of Adds, quick to run, slow to load."""
    chain = [helper.make_node("Add", ["input", "one"], ["h1"])]
    chain += [helper.make_node("Add", [f"h{i}", "one"], [f"h{i + 1}"]) for i in range(1, nodes)]
    chain.append(helper.make_node("ReduceSum", [f"h{nodes}", "axes"], ["output"], keepdims=1))
    weights = [
        numpy_helper.from_array(np.ones(1, np.float32), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
    ]
    _save(folder, chain, weights)


def _save(folder: Path, nodes: list[onnx.NodeProto], weights: list[onnx.TensorProto]) -> None:
    graph = helper.make_graph(
        nodes, folder.name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        weights,
    )  # fmt: skip
    folder.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(folder / "model.onnx"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle-store")
    make_model(root / LIGHT, size_bytes=100_000, seed=3)
    heavy_model(root / HEAVY)
    _slow_load_model(root / SLOW_LOAD)
    _slow_load_model(root / SLOWER_LOAD, SLOWER_LOAD_NODES)
    garbage = root / GARBAGE
    garbage.mkdir(parents=True)
    (garbage / "model.onnx").write_bytes(random.Random(0).randbytes(4096))
    return root


def _body(rows: int) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": [rows, 16], "data": [0.5] * rows * 16}
    return json.dumps({"inputs": [tensor]}).encode()


def _infer(url: str, model_id: str, rows: int = 1) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model_id}/infer", content=_body(rows), timeout=120)


def _output(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    data: list[float] = response.json()["outputs"][0]["data"]
    return data


def _value(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def _in_flight(url: str) -> float:
    return _value(url, "tenantserve_requests_in_flight")


def _leases(url: str, model_id: str) -> int:
    """How many requests hold ``model_id`` now (its lease): an admitted request is in flight
    before it takes one, so only this says an unload would have to wait for it."""
    models = httpx.get(f"{url}/v1/status", timeout=10).json()["models"]
    return sum(int(m["in_flight"]) for m in models if m["id"] == model_id)


def _status(url: str) -> int:
    """Status of a GET on a fresh connection; 0 when no connection can be made (refused, or
    reset as the listener closes under it)."""
    try:
        return httpx.get(url, timeout=5).status_code
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return 0


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


@pytest.fixture
def triton_client() -> Iterator[Callable[[str], triton.InferenceServerClient]]:
    clients: list[triton.InferenceServerClient] = []

    def make(url: str) -> triton.InferenceServerClient:
        client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- 32: health ----------------------------------------------------------------------------


def test_live_and_ready_hold_while_models_load_and_fail(
    start_server: Callable[..., ThreadServer],
    store: Path,
    pool: ThreadPoolExecutor,
    triton_client: Callable[[str], triton.InferenceServerClient],
) -> None:
    server = start_server(store, preload=(LIGHT,), failed_load_ttl_s=60)
    client = triton_client(server.url)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(LIGHT)
    assert not client.is_model_ready(SLOW_LOAD)  # in the store, not resident

    loading = pool.submit(_infer, server.url, SLOW_LOAD)
    until(lambda: _in_flight(server.url) == 1)
    # The load runs on a load thread: health, other models and metadata still answer.
    assert client.is_server_live()
    assert client.is_server_ready()
    assert not client.is_model_ready(SLOW_LOAD)
    assert _infer(server.url, LIGHT).status_code == 200
    assert not loading.done()

    failed = _infer(server.url, GARBAGE)
    assert failed.status_code == 500
    assert "not a loadable ONNX model" in failed.json()["error"]
    assert client.is_server_live()
    assert client.is_server_ready()
    assert not client.is_model_ready(GARBAGE)

    assert _output(loading.result()) == [SLOW_LOAD_OUTPUT]
    assert client.is_model_ready(SLOW_LOAD)
    client.unload_model(SLOW_LOAD)
    assert not client.is_model_ready(SLOW_LOAD)
    assert client.is_server_ready()


# -- 30: predict timeout -------------------------------------------------------------------


def test_a_predict_past_its_timeout_gets_504_and_other_models_are_served(
    start_server: Callable[..., ThreadServer], store: Path, pool: ThreadPoolExecutor
) -> None:
    server = start_server(store, threads=1, predict_timeout_s=1.0, preload=(HEAVY, LIGHT))
    runs = "tenantserve_inference_seconds_count"
    assert _infer(server.url, LIGHT).status_code == 200
    before = _value(server.url, runs)

    endless = pool.submit(_infer, server.url, HEAVY, ENDLESS_ROWS)
    until(lambda: _in_flight(server.url) == 1)
    # One predict thread, held by the endless run: the light model is still served.
    assert _infer(server.url, LIGHT).status_code == 200
    timed_out = endless.result()
    assert timed_out.status_code == 504
    assert timed_out.json()["error"] == f"model {HEAVY} did not answer within 1 s"
    # The run was stopped, not left to finish (that would take tens of seconds).
    until(lambda: _value(server.url, runs) == before + 2, timeout_s=15)
    # The model itself still serves what fits in its timeout.
    until(lambda: _infer(server.url, HEAVY).status_code == 200, timeout_s=10)

    runtime = sagemaker_runtime(server.url)
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(
            EndpointName="local", TargetModel=HEAVY, ContentType="text/csv",
            Body="\n".join(["0.5," * 15 + "0.5"] * ENDLESS_ROWS),
        )  # fmt: skip
    runtime.close()
    assert raised.value.response["Error"]["Code"] == "ModelError"
    assert "did not answer within 1 s" in raised.value.response["Error"]["Message"]


# -- 35: unload with requests in flight ------------------------------------------------------


def test_unload_lets_requests_in_flight_finish_and_asks_new_ones_to_retry(
    start_server: Callable[..., ThreadServer],
    store: Path,
    pool: ThreadPoolExecutor,
    triton_client: Callable[[str], triton.InferenceServerClient],
) -> None:
    server = start_server(store, threads=2, preload=(HEAVY,))
    client = triton_client(server.url)
    rows = 4 * HEAVY_RUN_ROWS  # still running when the unload and the next call come
    running = pool.submit(_infer, server.url, HEAVY, rows)
    until(lambda: _leases(server.url, HEAVY) == 1)
    client.unload_model(HEAVY)
    assert not client.is_model_ready(HEAVY)
    refused = _infer(server.url, HEAVY)
    assert refused.status_code == 503
    assert refused.json()["error"] == f"model {HEAVY} is being unloaded; retry shortly"
    assert int(refused.headers["Retry-After"]) >= 1
    assert not running.done()

    finished = _output(running.result())  # it ran to the end on the unloaded model
    until(lambda: _value(server.url, "tenantserve_loaded_models") == 0)
    # Closed: the next call loads it again, as any first call, and gets the same answer.
    assert _output(_infer(server.url, HEAVY, rows)) == finished


# -- 19: replaced in the store, reload -------------------------------------------------------


def test_a_replaced_model_serves_its_loaded_version_until_a_reload_swaps_it(
    start_server: Callable[..., ThreadServer],
    tmp_path: Path,
    triton_client: Callable[[str], triton.InferenceServerClient],
) -> None:
    root = tmp_path / "store"
    model_id = "swap/model"
    folder = root / model_id

    def publish(seed: int) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        make_model(folder, size_bytes=200_000, seed=seed)

    publish(1)
    server = start_server(root)
    client = triton_client(server.url)
    first = _output(_infer(server.url, model_id))

    publish(2)  # replaced in the store while loaded
    assert _output(_infer(server.url, model_id)) == first
    shutil.rmtree(folder)  # deleted from the store
    assert _output(_infer(server.url, model_id)) == first

    publish(2)
    client.load_model(model_id)  # Triton's load of a resident model reloads it
    second = _output(_infer(server.url, model_id))
    assert second != first

    # A corrupt new artifact: the reload fails, says why, and the loaded version serves on.
    (folder / "model.json").unlink()
    (folder / "model.onnx").write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(InferenceServerException) as failed:
        client.load_model(model_id)
    assert failed.value.status() == "500"
    assert "not a loadable ONNX model" in str(failed.value.message())
    assert _output(_infer(server.url, model_id)) == second
    assert client.is_model_ready(model_id)

    publish(3)
    result = CliRunner().invoke(cli_app, ["models", "load", model_id, "--url", server.url])
    assert result.exit_code == 0, result.output
    assert _output(_infer(server.url, model_id)) not in (first, second)

    # The SageMaker container API still refuses a second load of a resident model.
    again = httpx.post(
        f"{server.url}/models", json={"model_name": model_id, "url": model_id}, timeout=60
    )
    assert again.status_code == 409
    # One copy is left once the replaced ones have closed.
    until(lambda: _value(server.url, "tenantserve_loaded_models") == 1)
    used = _value(server.url, "tenantserve_memory_used_bytes")
    assert 0 < used <= _value(server.url, "tenantserve_memory_budget_bytes")


# -- 33, 34: SIGTERM --------------------------------------------------------------------------


def test_sigterm_turns_unready_drains_finishes_in_flight_work_and_exits(
    start_process: Callable[..., ProcessServer], store: Path, pool: ThreadPoolExecutor
) -> None:
    grace_s = 90.0  # the load converts to ORT format first: long on a busy machine
    server = start_process(
        store, "--preload", LIGHT, "--preload", HEAVY, "--threads", "2",
        "--shutdown-drain-s", "3", "--shutdown-grace-s", str(grace_s),
    )  # fmt: skip
    ready = f"{server.url}/v2/health/ready"

    loading = pool.submit(_infer, server.url, SLOWER_LOAD)  # waits on its model's load
    running = pool.submit(_infer, server.url, HEAVY, HEAVY_RUN_ROWS)
    until(lambda: _in_flight(server.url) == 2)
    unloaded = httpx.post(f"{server.url}/v2/repository/models/{HEAVY}/unload", timeout=10)
    assert unloaded.status_code == 200  # HEAVY now unloads while its request runs

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    # Readiness turns first, while the listener still takes connections (3 s: time enough
    # for this late request on a busy machine) ...
    until(lambda: _status(ready) != 200, timeout_s=5)
    assert _status(ready) == 503
    assert _infer(server.url, LIGHT).status_code == 200  # a late request is still served
    # ... then new connections are refused while the requests in flight go on.
    until(lambda: _status(ready) == 0, timeout_s=10)
    assert not loading.done()

    assert _output(loading.result()) == [16 * (SLOWER_LOAD_NODES + 0.5)]
    assert len(_output(running.result())) == HEAVY_RUN_ROWS
    returncode = server.proc.wait(timeout=grace_s)
    assert returncode in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled < grace_s
    assert "Traceback" not in server.log_path.read_text()


def test_shutdown_during_a_load_longer_than_the_grace_period_ends_in_time(
    start_process: Callable[..., ProcessServer], store: Path, pool: ThreadPoolExecutor
) -> None:
    grace_s = 2.0  # shorter than the load
    server = start_process(store, "--shutdown-grace-s", str(grace_s))
    loading: Future[Any] = pool.submit(_infer, server.url, SLOWER_LOAD)
    until(lambda: _in_flight(server.url) == 1)

    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    returncode = server.proc.wait(timeout=30)
    took_s = time.monotonic() - signalled
    assert returncode in (0, -signal.SIGTERM)
    assert took_s < grace_s, f"exited {took_s:.2f}s after SIGTERM"
    # The request still waiting on the load when the period ran out is told to retry.
    cut = loading.result()
    assert cut.status_code == 503
    assert cut.headers["Retry-After"] == "1"
    assert "shutting down" in cut.json()["error"]
