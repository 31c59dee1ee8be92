"""Small heads as plain weight arrays: a graph of simple float32 ops, run by numpy, no session.

An ONNX Runtime session holds ~210 KiB beside a MiniLM head's ~40 KiB of weights
(benchmarks/RESULTS.md): 10,000 heads on a shared encoder would outgrow a 2 GiB budget on
sessions alone. A head whose graph is made only of the ops below, with its weights inside the
file (read by ``numpy_helper.to_array``: data, never code), runs here instead; anything else
(another op, attribute, type or opset, external data, big weights) gets a session as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import PredictFailed
from tenantserve.runtimes.feeds import conformed_feed
from tenantserve.types import Tensors, TensorSpec

if TYPE_CHECKING:
    import onnx

MAX_WEIGHT_BYTES = 4 * 1024 * 1024  # past this a session's overhead no longer dominates
# Opsets whose semantics of these ops are the ones below (axes as inputs, one Softmax axis).
_OPSETS = range(13, 24)
# What a head costs beside its weights: its steps, specs and arrays' headers (~10 KiB measured
# per head over 1,000 fleet heads), its model's wrappers (base, tokenizer, top-k) and malloc
# slack: the server grew 57 KiB per head for ~37 KiB of weights (bench_fleet_index, 1,000).
OVERHEAD_BYTES = 20 * 1024
_F32 = np.dtype(np.float32)
# ONNX element types a head's inputs may have → (OIP datatype, numpy dtype).
_FLOAT = 1  # TensorProto.FLOAT (the onnx package is imported only once a head is read)
_TYPES: dict[int, tuple[str, np.dtype[Any]]] = {
    _FLOAT: ("FP32", _F32),
    11: ("FP64", np.dtype(np.float64)),
    6: ("INT32", np.dtype(np.int32)),
    7: ("INT64", np.dtype(np.int64)),
    9: ("BOOL", np.dtype(np.bool_)),
}
Array = npt.NDArray[Any]
Kernel = Callable[..., Array]
Axes = tuple[int, ...] | None


class Unsupported(Exception):
    """The graph holds something not run here exactly as ONNX Runtime runs it."""


Step = tuple[Kernel, tuple[str, ...], str]  # kernel, the values it takes, the value it makes


class DenseHead:
    """A head graph run with numpy, node by node in the file's (topological) order."""

    def __init__(
        self,
        weights: dict[str, Array],
        steps: tuple[Step, ...],
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
    ) -> None:
        self._weights: dict[str, Array] | None = weights
        self._steps = steps
        self.inputs = inputs
        self.outputs = outputs
        self.held_bytes = sum(a.nbytes for a in weights.values()) + OVERHEAD_BYTES

    def predict(self, tensors: Tensors) -> Tensors:
        weights = self._weights
        if weights is None:
            raise PredictFailed("model was unloaded")
        values = {**weights, **conformed_feed(self.inputs, tensors)}
        try:
            with np.errstate(all="ignore"):  # inf and nan propagate, as in ONNX Runtime
                for kernel, names, output in self._steps:
                    values[output] = kernel(*(values[name] for name in names))
        except (ValueError, IndexError) as exc:  # shapes that do not broadcast or multiply
            raise PredictFailed(f"model failed to run: {exc}") from exc
        return {spec.name: values[spec.name] for spec in self.outputs}

    def close(self) -> None:
        self._weights = None


def dense_head(model_file: Path) -> DenseHead | None:
    """The graph in ``model_file`` as a :class:`DenseHead`, or ``None``: use a session."""
    try:
        if model_file.stat().st_size > MAX_WEIGHT_BYTES + 64 * 1024:
            return None
        import onnx  # not at start-up: only a server with heads on a shared base reads them

        return _compile(onnx.load(str(model_file), load_external_data=False))
    # Unsupported, or a file protobuf cannot parse: the session path loads or reports it.
    except Exception:
        return None


def _compile(model: onnx.ModelProto) -> DenseHead:
    from onnx import numpy_helper

    graph = model.graph
    opsets = {op.domain or "ai.onnx": op.version for op in model.opset_import}
    if set(opsets) != {"ai.onnx"} or opsets["ai.onnx"] not in _OPSETS or model.functions:
        raise Unsupported("opset")
    if graph.sparse_initializer or any(t.data_location != 0 for t in graph.initializer):
        raise Unsupported("external or sparse weights")
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    if sum(a.nbytes for a in weights.values()) > MAX_WEIGHT_BYTES:
        raise Unsupported("weights too big")
    inputs = tuple(_spec(value) for value in graph.input)
    dtypes = {name: a.dtype for name, a in weights.items()}
    for spec, value in zip(inputs, graph.input, strict=True):
        if spec.name in dtypes:  # an overridable initializer: a session lists it apart
            raise Unsupported("input named as a weight")
        dtypes[spec.name] = _TYPES[value.type.tensor_type.elem_type][1]
    steps = tuple(_step(node, weights, dtypes) for node in graph.node)
    outputs = tuple(_spec(value) for value in graph.output)
    made = {output for _, _, output in steps}
    # Each output a fresh float32 array, made by a step: never a weight the caller could edit.
    if any(spec.datatype != "FP32" or spec.name not in made for spec in outputs):
        raise Unsupported("output")
    return DenseHead(weights, steps, inputs, outputs)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        raise Unsupported("tensor without a shape")
    if tensor.elem_type not in _TYPES:
        raise Unsupported("element type")
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(value.name, _TYPES[tensor.elem_type][0], shape)


def _step(
    node: onnx.NodeProto, weights: dict[str, Array], dtypes: dict[str, np.dtype[Any]]
) -> Step:
    """One node as a kernel over its data inputs (constant axes are folded into the kernel)."""
    rule = _OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if rule is None or len(node.output) != 1 or not node.output[0] or node.output[0] in dtypes:
        raise Unsupported(node.op_type)
    make, arities, known, takes_axes = rule
    from onnx.helper import get_attribute_value

    attrs = {a.name: get_attribute_value(a) for a in node.attribute}
    if not set(attrs) <= known:
        raise Unsupported(f"{node.op_type} attributes")
    names = list(node.input)
    axes: tuple[int, ...] | None = None
    if takes_axes:  # axes: an optional int64 constant after the data
        if len(names) == 2 and names[1]:
            if names[1] not in weights or weights[names[1]].dtype != np.int64:
                raise Unsupported("axes that are not a constant")
            axes = tuple(int(a) for a in weights[names[1]].reshape(-1))
        names = names[:1]
    if not all(names) or len(names) not in arities:
        raise Unsupported(f"{node.op_type} inputs")
    for name in names:
        if name not in dtypes:
            raise Unsupported("not in topological order")
        if dtypes[name] != _F32 and node.op_type != "Cast":
            raise Unsupported("arithmetic on other types than float32")
    dtypes[node.output[0]] = _F32
    return make(attrs, axes), tuple(names), node.output[0]


def _product(a: Array, b: Array) -> Array:
    """ONNX MatMul, accumulated in float64 and rounded once: at least as close to the exact
    product as ONNX Runtime's float32 kernels, and on this thread only (einsum without
    ``optimize`` never calls BLAS, whose threads a session-per-thread server does not plan)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if a.ndim < 2 or b.ndim < 2:
        product: Array = np.matmul(a64, b64)
    else:
        product = np.einsum("...ij,...jk->...ik", a64, b64, optimize=False)
    return product.astype(_F32)


def _gemm(attrs: dict[str, Any], _axes: Axes) -> Kernel:
    alpha, beta = np.float32(attrs.get("alpha", 1.0)), np.float32(attrs.get("beta", 1.0))
    trans_a, trans_b = bool(attrs.get("transA", 0)), bool(attrs.get("transB", 0))

    def gemm(a: Array, b: Array, c: Array | None = None) -> Array:
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(f"Gemm takes matrices, not shapes {a.shape} and {b.shape}")
        y = _product(a.T if trans_a else a, b.T if trans_b else b)
        y = y * alpha if alpha != 1 else y
        return y if c is None else y + (c * beta if beta != 1 else c)

    return gemm


def _softmax(attrs: dict[str, Any], _axes: Axes) -> Kernel:
    axis = int(attrs.get("axis", -1))

    def softmax(x: Array) -> Array:
        if x.size == 0:
            return x.copy()
        exp = np.exp(x - np.max(x, axis=axis, keepdims=True))
        out: Array = exp / np.sum(exp, axis=axis, keepdims=True)
        return out

    return softmax


def _reduce_sum(attrs: dict[str, Any], axes: Axes) -> Kernel:
    keep = bool(attrs.get("keepdims", 1))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return lambda x: x.copy()
    return lambda x: np.sum(x, axis=axes or None, keepdims=keep)


def _unsqueeze(_attrs: dict[str, Any], axes: Axes) -> Kernel:
    if not axes:
        raise Unsupported("Unsqueeze without constant axes")
    return lambda x: np.expand_dims(x, axes).copy()  # a view would let a weight out


def _cast(attrs: dict[str, Any], _axes: Axes) -> Kernel:
    if attrs.get("to") != _FLOAT:  # "saturate" concerns float8 targets only
        raise Unsupported("Cast to another type than float32")
    return lambda x: x.astype(_F32)


def _plain(kernel: Kernel) -> Callable[[dict[str, Any], Axes], Kernel]:
    return lambda _attrs, _axes: kernel


def _fold(ufunc: np.ufunc) -> Kernel:
    return lambda *xs: functools.reduce(ufunc, xs) if len(xs) > 1 else xs[0].copy()


_ONE, _ZERO, _NONE = np.float32(1), np.float32(0), frozenset[str]()
_MANY = range(1, 65)
# op → (kernel factory, input counts, attributes it reads, takes an axes input)
_OPS: dict[
    str, tuple[Callable[[dict[str, Any], Axes], Kernel], Container[int], frozenset[str], bool]
] = {
    "Add": (_plain(np.add), (2,), _NONE, False),
    "Sub": (_plain(np.subtract), (2,), _NONE, False),
    "Mul": (_plain(np.multiply), (2,), _NONE, False),
    "Div": (_plain(np.divide), (2,), _NONE, False),
    "Max": (_plain(_fold(np.maximum)), _MANY, _NONE, False),
    "Min": (_plain(_fold(np.minimum)), _MANY, _NONE, False),
    "Sqrt": (_plain(np.sqrt), (1,), _NONE, False),
    "Tanh": (_plain(np.tanh), (1,), _NONE, False),
    "Relu": (_plain(lambda x: np.maximum(x, _ZERO)), (1,), _NONE, False),
    "Sigmoid": (_plain(lambda x: _ONE / (_ONE + np.exp(-x))), (1,), _NONE, False),
    "Identity": (_plain(lambda x: x.copy()), (1,), _NONE, False),
    "MatMul": (_plain(_product), (2,), _NONE, False),
    "Gemm": (_gemm, (2, 3), frozenset({"alpha", "beta", "transA", "transB"}), False),
    "Softmax": (_softmax, (1,), frozenset({"axis"}), False),
    "ReduceSum": (_reduce_sum, (1,), frozenset({"keepdims", "noop_with_empty_axes"}), True),
    "Unsqueeze": (_unsqueeze, (1,), _NONE, True),
    "Cast": (_cast, (1,), frozenset({"to", "saturate"}), False),
}
