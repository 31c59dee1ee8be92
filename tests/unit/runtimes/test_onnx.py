"""OnnxRuntime: signature from the graph, input checks, text inputs, bad files, no extra threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tenantserve.errors import InvalidInput, LoadFailed
from tenantserve.runtimes import default_runtimes, runtime_for
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.types import ModelManifest, TensorSpec


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def numeric_model(folder: Path) -> Path:
    """y = x * 2, x FP32 [-1, 3]."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [two],
    )
    return _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), folder
    )


def text_model(folder: Path) -> Path:
    """Upper-cases strings: string in, string out (what text classifiers take)."""
    node = helper.make_node(
        "StringNormalizer", ["text"], ["upper"], case_change_action="UPPER", locale="C.UTF-8"
    )
    graph = helper.make_graph(
        [node],
        "upper",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("upper", TensorProto.STRING, [None])],
    )
    return _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), folder
    )


def test_signature_and_predict(tmp_path: Path) -> None:
    model = OnnxRuntime().load(numeric_model(tmp_path / "m"), ModelManifest())
    assert model.inputs == (TensorSpec("x", "FP32", (-1, 3)),)
    assert model.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    out = model.predict({"x": np.array([[1, 2, 3]], dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], [[2, 4, 6]])
    # Lossless widening (float16 → float32) is converted; narrowing would be refused.
    out = model.predict({"x": np.array([[1, 2, 3]], dtype=np.float16)})
    np.testing.assert_array_equal(out["y"], [[2, 4, 6]])
    model.close()


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.zeros((1, 4), np.float32)}, "input 'x' has shape \\[1, 4\\]"),
        ({"x": np.zeros((3,), np.float32)}, "expects 2 dimensions"),
        ({"x": np.array([["a", "b", "c"]], dtype=object)}, "datatype object"),
        ({"x": np.zeros((1, 3), np.float32), "z": np.zeros(1)}, "unexpected input 'z'"),
    ],
)
def test_bad_inputs_name_the_input(
    tmp_path: Path, tensors: dict[str, np.ndarray], message: str
) -> None:
    model = OnnxRuntime().load(numeric_model(tmp_path / "m"), ModelManifest())
    with pytest.raises(InvalidInput, match=message):
        model.predict(tensors)


def test_text_inputs_accept_str_and_utf8_bytes(tmp_path: Path) -> None:
    model = OnnxRuntime().load(text_model(tmp_path / "t"), ModelManifest())
    assert model.inputs == (TensorSpec("text", "BYTES", (-1,)),)
    out = model.predict({"text": np.array(["card lost", "Zürich".encode()], dtype=object)})
    assert list(out["upper"]) == ["CARD LOST", "ZÜRICH"]
    with pytest.raises(InvalidInput, match="element 0 is not valid UTF-8"):
        model.predict({"text": np.array([b"\xff\xfe"], dtype=object)})


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all", b"\x08\x07\x12\x04junk" * 10])
def test_corrupt_artifact_is_a_load_failure(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(LoadFailed, match="not a loadable ONNX model"):
        OnnxRuntime().load(tmp_path, ModelManifest())


def test_truncated_artifact_is_a_load_failure(tmp_path: Path) -> None:
    folder = numeric_model(tmp_path / "m")
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadFailed) as info:
        OnnxRuntime().load(folder, ModelManifest())
    assert str(tmp_path) not in str(info.value)  # no host path reaches the caller


def test_missing_model_file_and_unknown_runtime(tmp_path: Path) -> None:
    with pytest.raises(LoadFailed, match=r"no model\.onnx"):
        OnnxRuntime().load(tmp_path, ModelManifest())
    with pytest.raises(LoadFailed, match="runtime 'pickle' is not enabled"):
        runtime_for(default_runtimes(), ModelManifest(runtime="pickle"))


def test_sessions_add_no_threads(tmp_path: Path) -> None:
    folder = numeric_model(tmp_path / "m")
    runtime = OnnxRuntime()
    warm = runtime.load(folder, ModelManifest())  # first session may start ORT's global pools
    warm.predict({"x": np.ones((1, 3), np.float32)})
    before = threading.active_count()
    import psutil

    native_before = psutil.Process().num_threads()
    models = [runtime.load(folder, ModelManifest()) for _ in range(50)]
    for model in models:
        model.predict({"x": np.ones((1, 3), np.float32)})
    assert threading.active_count() == before
    assert psutil.Process().num_threads() <= native_before + 1
