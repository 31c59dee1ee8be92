"""A converter's ONNX graph, finished for serving: tensors named as users expect them.

Converters differ in what they emit (skl2onnx ``output_label``/``output_probability`` behind a
ZipMap, onnxmltools ``label``/``probabilities``, regressors ``variable`` [N, 1]). Served, a
classifier answers ``label`` [N] and ``probabilities`` [N, classes], a regressor
``predictions`` [N]; the input is ``input`` [N, features] FP32. ZipMap (a list of maps per
row) is dropped: ONNX Runtime serves tensors, and the map's keys are the class order anyway.
"""

from __future__ import annotations

from typing import Any

from onnx import TensorProto, helper

from tenantserve.convert.base import LABEL, PREDICTIONS, PROBABILITIES, Kind
from tenantserve.errors import LoadFailed


def finish(model: Any, kind: Kind, classes: int | None = None) -> Any:
    """``model`` (an ``onnx.ModelProto``, changed in place) with the served outputs;
    ``classes``, when known, declared as the width of ``probabilities``."""
    graph = model.graph
    sources = [_unzipped(graph, output.name) for output in graph.output]
    label_type = _elem_type(graph.output[0]) if graph.output else TensorProto.INT64
    if classes is None and sources:
        classes = _classes(model, sources[-1])
    del graph.output[:]
    if kind == "classifier":
        if len(sources) != 2:
            raise LoadFailed(f"the converted classifier has {len(sources)} outputs, not 2")
        label, scores = sources
        _alias(graph, label, LABEL)
        _alias(graph, scores, PROBABILITIES)
        graph.output.extend(
            [
                helper.make_tensor_value_info(LABEL, label_type, ["N"]),
                helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", classes]),
            ]
        )
        return model
    if len(sources) != 1:
        raise LoadFailed(f"the converted regressor has {len(sources)} outputs, not 1")
    shape = f"{PREDICTIONS}_shape"
    graph.initializer.append(helper.make_tensor(shape, TensorProto.INT64, [1], [-1]))
    graph.node.append(helper.make_node("Reshape", [sources[0], shape], [PREDICTIONS]))
    graph.output.append(helper.make_tensor_value_info(PREDICTIONS, TensorProto.FLOAT, ["N"]))
    return model


def _unzipped(graph: Any, name: str) -> str:
    """The tensor behind output ``name``: a ZipMap's input (the node removed), else itself."""
    for node in graph.node:
        if name in node.output and node.op_type == "ZipMap":
            source: str = node.input[0]
            graph.node.remove(node)
            return source
    return name


def _alias(graph: Any, source: str, name: str) -> None:
    if source == name:
        return
    _free(graph, name)
    graph.node.append(helper.make_node("Identity", [source], [name]))


def _free(graph: Any, name: str) -> None:
    """Rename an inner tensor called ``name`` (skl2onnx has one called ``label``)."""
    inner = f"{name}_inner"
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = inner
        for i, value in enumerate(node.output):
            if value == name:
                node.output[i] = inner


def _elem_type(output: Any) -> int:
    tensor = output.type.tensor_type
    # A ZipMap's output is a sequence, not a tensor; its label sibling is int64 or string.
    return int(tensor.elem_type) if output.type.HasField("tensor_type") else TensorProto.INT64


def _classes(model: Any, scores: str) -> int | None:
    """The number of classes if the graph declares it on ``scores`` (else left symbolic)."""
    for info in [*model.graph.value_info, *model.graph.output]:
        if info.name == scores and info.type.HasField("tensor_type"):
            dims = info.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value"):
                return int(dims[1].dim_value)
    return None
