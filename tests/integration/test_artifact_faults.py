"""Broken artifacts on the real server (RELIABILITY 13, 15): a clear load error, remembered for a
while rather than reloaded on every request, and every other model keeps serving."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from fixtures.oip import infer, scrape, write_model
from fixtures.server import ThreadServer

RESIDENT = "acme/resident"
FAILED_LOAD_TTL_S = 3.0
EXPIRY_BOUND_S = 30.0


def _flip(data: bytes, offset: int, bit: int = 0x80) -> bytes:
    return data[:offset] + bytes([data[offset] ^ bit]) + data[offset + 1 :]


def _graph_model(folder: Path, node: onnx.NodeProto, *, elem: int, opset: int = 17,
                 ir_version: int = 9, domains: tuple[str, ...] = ()) -> None:  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", elem, [None])],
        [helper.make_tensor_value_info("output", elem, [None])],
    )
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=imports, ir_version=ir_version)
    folder.mkdir(parents=True)
    # Bypass onnx's own checker: these are the files a careless exporter would publish.
    (folder / "model.onnx").write_bytes(model.SerializeToString())


def _load_failures(client: httpx.Client) -> float:
    return scrape(client)["tenantserve_model_load_failures_total"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_model(root / RESIDENT, weight_floats=256, seed=1)
    write_model(root / "acme" / "whole", weight_floats=4096, seed=2)
    data = (root / "acme" / "whole" / "model.onnx").read_bytes()
    (root / "acme" / "truncated").mkdir(parents=True)
    (root / "acme" / "truncated" / "model.onnx").write_bytes(data[: len(data) // 2])
    # A flip in the header breaks the protobuf itself.
    (root / "acme" / "flipped").mkdir(parents=True)
    (root / "acme" / "flipped" / "model.onnx").write_bytes(_flip(data, 0))
    # A flip in the weights leaves a valid model with other weights: only a digest tells.
    (root / "acme" / "flipped-weights").mkdir(parents=True)
    (root / "acme" / "flipped-weights" / "model.onnx").write_bytes(_flip(data, len(data) // 2))
    (root / "acme" / "flipped-weights" / "model.json").write_text(
        json.dumps({"sha256": hashlib.sha256(data).hexdigest()})
    )
    return root


@pytest.fixture
def server(store: Path, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    server = start_server(store, failed_load_ttl_s=FAILED_LOAD_TTL_S)
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, RESIDENT).status_code == 200
    return server


@pytest.mark.parametrize(
    ("model_id", "reason"),
    [
        ("acme/truncated", "not a loadable ONNX model"),
        ("acme/flipped", "not a loadable ONNX model: Load model from model.onnx failed"),
        (
            "acme/flipped-weights",
            "model acme/flipped-weights: model file 'model.onnx' does not match the sha256",
        ),
    ],
)
def test_damaged_model_is_a_remembered_load_error(
    server: ThreadServer, store: Path, model_id: str, reason: str
) -> None:
    with httpx.Client(base_url=server.url) as client:
        started = time.monotonic()
        first = infer(client, model_id)
        assert first.status_code == 500, first.text
        error = first.json()["error"]
        assert reason in error, error
        assert str(store) not in first.text
        assert "/onnxruntime_src" not in first.text
        assert "Retry-After" not in first.headers  # a broken file: retrying now will not help
        # Within the failure memory, callers get the same answer and nothing is reloaded.
        again = [infer(client, model_id) for _ in range(3)]
        assert time.monotonic() - started < FAILED_LOAD_TTL_S, "too slow to test the memory"
        assert [r.status_code for r in again] == [500] * 3
        assert {r.json()["error"] for r in again} == {error}
        assert _load_failures(client) == 1
        assert infer(client, RESIDENT).status_code == 200
        # Once the memory expires, the next call tries the store again (and fails again).
        while _load_failures(client) < 2:
            assert time.monotonic() - started < EXPIRY_BOUND_S, "failure never expired"
            assert infer(client, model_id).status_code == 500
            time.sleep(0.2)
        assert time.monotonic() - started >= FAILED_LOAD_TTL_S


def test_unsupported_models_fail_cleanly_and_others_keep_serving(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    root = tmp_path / "store"
    write_model(root / RESIDENT, weight_floats=256, seed=1)
    relu = helper.make_node("Relu", ["input"], ["output"])
    _graph_model(root / "acme" / "opset-99", relu, elem=TensorProto.FLOAT, opset=99)
    _graph_model(root / "acme" / "ir-99", relu, elem=TensorProto.FLOAT, ir_version=99)
    custom = helper.make_node("Frobnicate", ["input"], ["output"], domain="com.example")
    _graph_model(root / "acme" / "custom-op", custom, elem=TensorProto.FLOAT,
                 domains=("com.example",))  # fmt: skip
    # A locale no machine has: the case of en_US.UTF-8 on a slim image that lacks it.
    normalize = helper.make_node(
        "StringNormalizer", ["input"], ["output"], case_change_action="LOWER",
        locale="xx_XX.UTF-8",
    )  # fmt: skip
    _graph_model(root / "acme" / "no-locale", normalize, elem=TensorProto.STRING)
    expected = {
        "acme/opset-99": "Opset 99 is under development",
        "acme/ir-99": "Unsupported model IR version: 99",
        "acme/custom-op": "com.example:Frobnicate(-1) is not a registered function/op",
        "acme/no-locale": "Failed to construct locale with name:xx_XX.UTF-8",
    }
    server = start_server(root, failed_load_ttl_s=60)
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, RESIDENT).status_code == 200
        for model_id, reason in expected.items():
            response = infer(client, model_id)
            assert response.status_code == 500, response.text
            error = response.json()["error"]
            assert error.startswith("not a loadable ONNX model: "), error
            assert reason in error, error
            assert str(tmp_path) not in error
            assert "/onnxruntime_src" not in error
            assert infer(client, RESIDENT).status_code == 200
            assert client.get(f"/v2/models/{model_id}/ready").status_code != 200
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        assert _load_failures(client) == len(expected)
