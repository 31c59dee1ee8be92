"""Declared top-k post-processing on real ONNX graphs, and its wiring into runtime loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tenantserve.errors import InvalidInput, LoadFailed, PredictFailed
from tenantserve.runtimes import LoadedModel, default_runtimes, runtime_for, wrap
from tenantserve.types import ModelManifest, Tensors, TensorSpec, TopKPostprocess

LABELS = ("card_lost", "refund", "transfer", "exchange_rate")


def scores_graph(
    folder: Path,
    *,
    columns: int | str = len(LABELS),
    outputs: tuple[str, ...] = ("probabilities",),
    elem: int = TensorProto.FLOAT,
) -> Path:
    """Returns input ``x`` [batch, columns] as each of ``outputs``: scores the test chooses."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [name]) for name in outputs],
        "scores",
        [helper.make_tensor_value_info("x", elem, ["batch", columns])],
        [helper.make_tensor_value_info(name, elem, ["batch", columns]) for name in outputs],
    )
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def load(folder: Path, manifest: ModelManifest) -> LoadedModel:
    return runtime_for(default_runtimes(), manifest).load(folder, manifest)


def manifest(top_k: int = 3, scores_output: str = "probabilities") -> ModelManifest:
    return ModelManifest(
        labels=LABELS, postprocess=TopKPostprocess(scores_output=scores_output, top_k=top_k)
    )


SCORES = np.array([[0.1, 0.6, 0.2, 0.1], [0.4, 0.05, 0.05, 0.5]], dtype=np.float32)


def test_the_best_labels_come_first_with_their_scores(tmp_path: Path) -> None:
    model = load(scores_graph(tmp_path), manifest(top_k=3))
    out = model.predict({"x": SCORES})
    assert out["macros"].tolist() == [
        ["refund", "transfer", "card_lost"],
        ["exchange_rate", "card_lost", "refund"],
    ]
    assert out["scores"].dtype == np.float32
    np.testing.assert_allclose(out["scores"], [[0.6, 0.2, 0.1], [0.5, 0.4, 0.05]])
    np.testing.assert_array_equal(out["probabilities"], SCORES)  # the original output stays


def test_the_signature_adds_macros_and_scores(tmp_path: Path) -> None:
    model = load(scores_graph(tmp_path), manifest(top_k=2))
    assert model.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert model.outputs == (
        TensorSpec("probabilities", "FP32", (-1, 4)),
        TensorSpec("macros", "BYTES", (-1, 2)),
        TensorSpec("scores", "FP32", (-1, 2)),
    )


def test_k_is_at_most_the_number_of_labels_and_ties_keep_label_order(tmp_path: Path) -> None:
    model = load(scores_graph(tmp_path), manifest(top_k=10))
    out = model.predict({"x": np.full((1, 4), 0.25, np.float32)})
    assert out["macros"].tolist() == [list(LABELS)]
    assert out["scores"].shape == (1, 4)


def test_double_scores_come_back_as_fp32(tmp_path: Path) -> None:
    model = load(scores_graph(tmp_path, elem=TensorProto.DOUBLE), manifest(top_k=1))
    out = model.predict({"x": SCORES.astype(np.float64)})
    assert out["macros"].tolist() == [["refund"], ["exchange_rate"]]
    assert out["scores"].dtype == np.float32


FP32 = TensorProto.FLOAT


@pytest.mark.parametrize(
    ("columns", "outputs", "elem", "scores_output", "message"),
    [
        (3, ("probabilities",), FP32, "probabilities", "holds 3 scores per row but .* 4 labels"),
        (4, ("probabilities",), FP32, "logits", "'logits' is not an output of the model"),
        (4, ("probabilities",), TensorProto.INT64, "probabilities", "top-k needs float scores"),
        (4, ("probabilities", "scores"), FP32, "probabilities", "'scores', which the model"),
    ],
)
def test_a_step_that_does_not_fit_the_graph_is_a_load_failure(
    tmp_path: Path,
    columns: int,
    outputs: tuple[str, ...],
    elem: int,
    scores_output: str,
    message: str,
) -> None:
    folder = scores_graph(tmp_path, columns=columns, outputs=outputs, elem=elem)
    with pytest.raises(LoadFailed, match=message):
        load(folder, manifest(scores_output=scores_output))


def test_a_row_of_the_wrong_width_at_run_time_is_a_predict_failure(tmp_path: Path) -> None:
    # The graph leaves the width open, so only the scores it returns can be checked.
    model = load(scores_graph(tmp_path, columns="labels"), manifest())
    assert model.predict({"x": SCORES})["macros"].shape == (2, 3)
    with pytest.raises(PredictFailed, match=r"expected \[batch, 4\]"):
        model.predict({"x": np.zeros((2, 5), np.float32)})


class _Recording:
    """A LoadedModel that records whether it was closed."""

    platform = "fake"
    inputs = (TensorSpec("x", "FP32", (-1, 4)),)
    outputs = (TensorSpec("probabilities", "FP32", (-1, 4)),)

    def __init__(self) -> None:
        self.closed = False

    def predict(self, tensors: Tensors) -> Tensors:
        return {"probabilities": tensors["x"]}

    def close(self) -> None:
        self.closed = True


def test_a_model_whose_step_fails_is_closed() -> None:
    model = _Recording()
    with pytest.raises(LoadFailed):
        wrap(model, manifest(scores_output="logits"), Path("."))
    assert model.closed


def test_a_manifest_without_steps_leaves_the_model_as_loaded(tmp_path: Path) -> None:
    model = _Recording()
    assert wrap(model, ModelManifest(labels=LABELS), tmp_path) is model
    folder = scores_graph(tmp_path)
    plain = load(folder, ModelManifest())
    assert [spec.name for spec in plain.outputs] == ["probabilities"]
    assert runtime_for(default_runtimes(), ModelManifest()).name == "onnx"


class _TextClassifier:
    """A LoadedModel over ticket text (as a TF-IDF graph is) that scores whatever it is given."""

    platform = "fake"
    inputs = (TensorSpec("text", "BYTES", (-1, 1)),)
    outputs = (TensorSpec("probabilities", "FP32", (-1, 4)),)

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, tensors: Tensors) -> Tensors:
        self.calls += 1
        return {"probabilities": np.tile(SCORES[:1], (len(tensors["text"]), 1))}

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([""], "input 'text' element 0 is empty"),
        (["card lost", " \t\n"], "input 'text' element 1 is empty"),
        ([b"card lost", b""], "input 'text' element 1 is empty"),
        (["card lost", b"caf\xe9"], "input 'text' element 1 is not valid UTF-8"),
    ],
)
def test_a_classifier_refuses_blank_or_undecodable_text_naming_the_input(
    texts: list[object], message: str
) -> None:
    inner = _TextClassifier()
    model = wrap(inner, manifest(), Path("."))
    with pytest.raises(InvalidInput, match=message):
        model.predict({"text": np.array(texts, dtype=object).reshape(-1, 1)})
    assert inner.calls == 0


def test_a_classifier_ranks_real_text_given_as_str_or_utf8_bytes() -> None:
    inner = _TextClassifier()
    model = wrap(inner, manifest(top_k=1), Path("."))
    out = model.predict({"text": np.array([["card lost"], ["caf\xe9".encode()]], dtype=object)})
    assert out["macros"].tolist() == [["refund"], ["refund"]]
    assert inner.calls == 1
