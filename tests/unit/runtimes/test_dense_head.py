"""Heads as weight arrays: real Banking77 heads answer as their ONNX Runtime session does.

Not to 1e-6 everywhere: the fleet's heads are ridge fits scaled by a softmax temperature of up
to 200, so logits reach ~250, where one float32 step is 1.5e-5 and two float32 evaluations
differ by some (1.4e-5 at most over 100 heads of a 1,000-tenant fleet and 256 tickets). What
holds: the arrays are as close to the exact (float64) answer as the session, within 1e-6.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fixtures.fleets import small_plans
from fixtures.shared_base import base_bytes, expected, write_tenant
from tenantserve.errors import InvalidInput
from tenantserve.runtimes.dense_head import MAX_WEIGHT_BYTES, DenseHead, dense_head
from tenantserve.runtimes.onnx import OnnxModel, OnnxRuntime
from tenantserve.runtimes.shared import BaseHeadModel
from tenantserve.store.manifest import checked_manifest
from tenantserve.tools.fleet import minilm
from tenantserve.tools.fleet.build import build_fleet
from tenantserve.tools.fleet.publish import open_publisher

TOLERANCE = 1e-6  # beyond the session's own distance from the exact answer
SESSION_GAP = 2e-5  # the most two float32 evaluations of a fleet head were seen to differ
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Heads:
    folders: tuple[Path, ...]
    texts: list[str]  # real tickets
    feed: dict[str, Any]  # the shared encoder's output and the mask for them


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Heads:
    plans = small_plans(3, train=6, holdout=1)
    root = tmp_path_factory.mktemp("dense-heads")
    built = build_fleet(plans, kind="minilm", publisher=open_publisher(str(root)), seed=0)
    folders = tuple(root / b.model_id for b in built)
    encoder = minilm.session(folders[0] / "encoder.onnx", threads=1)
    tokenizer = minilm.load_tokenizer(folders[0] / "tokenizer.json")
    texts = [row.text for plan in plans for row in plan.holdout][:16]
    return Heads(folders, texts, minilm.hidden_feed(encoder, tokenizer, texts))


def _session(model_file: Path) -> OnnxModel:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return OnnxModel(ort.InferenceSession(str(model_file), options, ["CPUExecutionProvider"]))


def _exact(model_file: Path, feed: dict[str, Any]) -> Floats:
    """The head's formula (mean pool, L2 norm, linear, softmax) in float64."""
    weights = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(str(model_file)).graph.initializer
    }
    hidden = next(v for k, v in feed.items() if k != "attention_mask").astype(np.float64)
    mask = feed["attention_mask"].astype(np.float64)[:, :, None]
    mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    unit = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    logits = unit @ weights["tenantserve_head/weights"] + weights["tenantserve_head/bias"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: Floats = exp / exp.sum(axis=1, keepdims=True)
    return result


@pytest.mark.parametrize("rows", [1, 16])
def test_real_heads_answer_as_their_session(heads: Heads, rows: int) -> None:
    feed = {name: array[:rows] for name, array in heads.feed.items()}
    for folder in heads.folders:
        model_file = folder / "model.onnx"
        dense, session = dense_head(model_file), _session(model_file)
        assert dense is not None
        assert (dense.inputs, dense.outputs) == (session.inputs, session.outputs)
        got, want = dense.predict(feed), session.predict(feed)
        assert list(got) == list(want) == ["probabilities"]
        assert got["probabilities"].dtype == want["probabilities"].dtype == np.float32
        assert got["probabilities"].shape == want["probabilities"].shape
        exact = _exact(model_file, feed)
        session_error = np.abs(want["probabilities"] - exact).max()
        assert np.abs(got["probabilities"] - exact).max() <= session_error + TOLERANCE
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=SESSION_GAP)
        assert (got["probabilities"].argmax(1) == want["probabilities"].argmax(1)).all()


def test_a_head_holds_its_weights_and_checks_inputs_as_a_session(heads: Heads) -> None:
    model_file = heads.folders[0] / "model.onnx"
    dense = dense_head(model_file)
    assert isinstance(dense, DenseHead)
    labels = len(json.loads((heads.folders[0] / "model.json").read_text())["labels"])
    weights = 384 * labels * 4
    assert weights < dense.held_bytes < weights + 32 * 1024
    mask = heads.feed["attention_mask"]
    with pytest.raises(InvalidInput, match="missing input 'last_hidden_state'"):
        dense.predict({"attention_mask": mask})
    with pytest.raises(InvalidInput, match="unexpected input 'z'"):
        dense.predict({**heads.feed, "z": mask})
    with pytest.raises(InvalidInput, match="the model expects 3 dimensions"):
        dense.predict({**heads.feed, "last_hidden_state": mask.astype(np.float32)})


def _head_file(tmp: Path, nodes: list[Any], weights: dict[str, Any], *, opset: int = 17) -> Path:
    """x [n, 4] → y [n, 3] through ``nodes`` (the last one makes ``y``)."""
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    path = tmp / "model.onnx"
    onnx.save(model, str(path))
    return path


W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def test_the_other_listed_ops_answer_as_onnx_runtime(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["g"], alpha=0.5, beta=2.0),
        helper.make_node("Tanh", ["g"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Sub", ["r", "b"], ["d"]),
        helper.make_node("Min", ["d", "r"], ["m"]),
        helper.make_node("Identity", ["m"], ["i"]),
        helper.make_node("Softmax", ["i"], ["y"], axis=0),
    ]
    path = _head_file(tmp_path, nodes, {"W": W, "b": np.array([0.1, -0.2, 0.3], np.float32)})
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    dense = dense_head(path)
    assert dense is not None
    np.testing.assert_allclose(
        dense.predict({"x": x})["y"], _session(path).predict({"x": x})["y"], atol=TOLERANCE
    )


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Max", ["W1"], ["y"]),
        helper.make_node("Unsqueeze", ["b", "axes"], ["y"]),
        helper.make_node("Identity", ["W1"], ["y"]),
    ],
)
def test_no_answer_is_a_weight_the_caller_could_change(tmp_path: Path, node: Any) -> None:
    weights = {"W1": W[:1], "b": W[0], "axes": np.array([0], np.int64)}
    dense = dense_head(_head_file(tmp_path, [node], weights))
    assert dense is not None
    x = np.zeros((1, 4), np.float32)
    dense.predict({"x": x})["y"][...] = -1
    np.testing.assert_array_equal(dense.predict({"x": x})["y"], W[:1])


@pytest.mark.parametrize(
    ("nodes", "weights", "opset"),
    [
        ([helper.make_node("MatMul", ["x", "W"], ["p"]), helper.make_node("Erf", ["p"], ["y"])],
         {"W": W}, 17),  # an op not on the list
        ([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": W}, 12),  # an older opset
        ([helper.make_node("Gemm", ["x", "W"], ["p"]),
          helper.make_node("Cast", ["p"], ["q"], to=TensorProto.INT64),
          helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)], {"W": W}, 17),
        ([helper.make_node("MatMul", ["x", "W"], ["y"])],
         {"W": np.zeros((4, MAX_WEIGHT_BYTES // 4), np.float32)[:, :3],
          "big": np.zeros(MAX_WEIGHT_BYTES // 4 + 1, np.float32)}, 17),  # too big
        ([helper.make_node("Softmax", ["p"], ["y"]), helper.make_node("MatMul", ["x", "W"], ["p"])],
         {"W": W}, 17),  # not in topological order
    ],
)  # fmt: skip
def test_anything_else_is_left_to_a_session(
    tmp_path: Path, nodes: list[Any], weights: dict[str, Any], opset: int
) -> None:
    assert dense_head(_head_file(tmp_path, nodes, weights, opset=opset)) is None


def test_external_weights_and_unreadable_files_are_left_to_a_session(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    write_tenant(folder, 1, base_bytes(tmp_path))
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save(model, str(folder / "ext.onnx"), save_as_external_data=True, size_threshold=0)
    assert dense_head(folder / "model.onnx") is not None
    assert dense_head(folder / "ext.onnx") is None
    (folder / "junk.onnx").write_bytes(b"\x08\x07not a model")
    assert dense_head(folder / "junk.onnx") is None
    assert dense_head(folder / "missing.onnx") is None


def test_fleet_heads_load_as_arrays_and_answer_in_one_grouped_batch(heads: Heads) -> None:
    runtime = OnnxRuntime()
    models = []
    for folder in heads.folders:
        manifest = checked_manifest(folder, folder.name)
        held = runtime.prepare(folder, manifest).held_bytes
        assert held is not None
        assert held > len(manifest.labels or ()) * 384 * 4 > 0
        model = runtime.load(folder, manifest)
        assert isinstance(model, BaseHeadModel)
        models.append(model)
    tokenizer = minilm.load_tokenizer(heads.folders[0] / "tokenizer.json")
    tokens = minilm.encode(tokenizer, heads.texts)
    parts = [(models[0], 5), (models[1], 6), (models[2], 5)]

    grouped = models[0].predict_group(tokens, parts)

    # Each tenant's rows as its head's own session answers them.
    encoder = minilm.session(heads.folders[0] / "encoder.onnx", threads=1)
    start = 0
    for (model, rows), folder, got in zip(parts, heads.folders, grouped, strict=True):
        rows_of = {name: array[start : start + rows] for name, array in tokens.items()}
        feed = minilm.hidden_feed(encoder, tokenizer, heads.texts[start : start + rows])
        want = _session(folder / "model.onnx").predict(feed)["probabilities"]
        np.testing.assert_allclose(got["probabilities"], want, atol=SESSION_GAP)
        assert (got["probabilities"].argmax(1) == want.argmax(1)).all()
        np.testing.assert_array_equal(got["probabilities"], model.predict(rows_of)["probabilities"])
        start += rows
    for model in models:
        model.close()
    assert runtime.shared_usage().held_bytes == 0


def test_a_head_with_an_op_off_the_list_runs_in_its_session(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    runtime = OnnxRuntime()
    head_v = write_tenant(tmp_path / "arrays", 1, base)
    write_tenant(tmp_path / "session", 1, base)
    model = onnx.load(str(tmp_path / "session" / "model.onnx"))
    model.graph.node[-1].output[0] = "pre_y"
    model.graph.node.append(helper.make_node("Erf", ["pre_y"], ["y"]))
    onnx.save(model, str(tmp_path / "session" / "model.onnx"))
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    bias = np.full((3, 3), 0.1, np.float32)
    answers = {}
    for name in ("arrays", "session"):
        manifest = checked_manifest(tmp_path / name, name)
        held = runtime.prepare(tmp_path / name, manifest).held_bytes
        assert (held is not None) == (name == "arrays")
        answers[name] = runtime.load(tmp_path / name, manifest).predict({"x": x, "bias": bias})
    linear = expected(x, head_v, bias)
    np.testing.assert_allclose(answers["arrays"]["y"], linear, rtol=1e-5, atol=1e-5)
    erf = np.vectorize(math.erf)(linear)
    np.testing.assert_allclose(answers["session"]["y"], erf, rtol=1e-5, atol=1e-5)
