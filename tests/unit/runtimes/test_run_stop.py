"""RunStop: callbacks once, per-thread current stop; ONNX Runtime runs stop when told to."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tenantserve.errors import PredictFailed
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.runtimes.run_stop import RunStop, current_run_stop
from tenantserve.types import ModelManifest, Tensors

LAYERS = 1000
WIDTH = 256
SLOW_ROWS = 4096  # seconds of one core: far longer than the test waits before stopping it


def _slow_model(folder: Path) -> Path:
    """``input`` [N, 16] through LAYERS MatMul+Tanh of one shared weight: slow per row."""
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((16, WIDTH)) / 4).astype(np.float32)
    w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "W0"], ["h0"])]
    for i in range(LAYERS):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{LAYERS}", "axes"], ["output"], keepdims=1))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w0, "W0"), numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )  # fmt: skip
    folder.mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def _rows(n: int) -> Tensors:
    return {"input": np.ones((n, 16), dtype=np.float32)}


def test_callbacks_run_once_and_late_ones_at_once() -> None:
    stop = RunStop()
    calls: list[str] = []
    stop.on_stop(lambda: calls.append("early"))
    forget = stop.on_stop(lambda: calls.append("forgotten"))
    forget()
    stop.stop()
    stop.stop()
    stop.on_stop(lambda: calls.append("late"))
    assert calls == ["early", "late"]
    assert stop.stopped


def test_the_current_stop_belongs_to_the_running_block_and_thread() -> None:
    stop = RunStop()
    seen: list[RunStop | None] = []
    with stop.running():
        seen.append(current_run_stop())
        with ThreadPoolExecutor(1) as pool:  # another thread has no current stop
            seen.append(pool.submit(current_run_stop).result())
    seen.append(current_run_stop())
    assert seen == [stop, None, None]


def test_an_onnx_run_stops_when_told_and_the_model_keeps_serving(tmp_path: Path) -> None:
    model = OnnxRuntime().load(_slow_model(tmp_path / "slow"), ModelManifest())
    stop = RunStop()
    timer = threading.Timer(0.3, stop.stop)
    timer.start()
    try:
        with stop.running(), pytest.raises(PredictFailed, match="stopped before it finished"):
            model.predict(_rows(SLOW_ROWS))
    finally:
        timer.cancel()
    # Each run has options of its own: the next one is not stopped.
    assert model.predict(_rows(1))["output"].shape == (1, 1)


def test_an_onnx_run_already_stopped_does_not_start(tmp_path: Path) -> None:
    model = OnnxRuntime().load(_slow_model(tmp_path / "slow"), ModelManifest())
    stop = RunStop()
    stop.stop()
    with stop.running(), pytest.raises(PredictFailed, match="stopped before it finished"):
        model.predict(_rows(SLOW_ROWS))
