"""Keras layers as ONNX nodes: each written from the layer's configuration and weights.

Each translation computes what Keras computes when predicting, in float32: ``Dense`` is
``x @ kernel + bias`` then its activation; ``BatchNormalization`` folds to ``x * a + b`` with
``a = gamma / sqrt(variance + epsilon)`` (as Keras folds it); ``Normalization`` divides by
``max(sqrt(variance), 1e-7)``; dropout and noise layers do nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tenantserve.convert.keras_archive import PASS_THROUGH
from tenantserve.convert.network import Ending
from tenantserve.errors import LoadFailed

OPSET = 17  # LayerNormalization
_EPSILON = 1e-7  # keras.backend.epsilon(), Normalization's floor


class Builder:
    """An ONNX graph grown one layer at a time from input ``name`` ``[N, features]``."""

    def __init__(self, name: str, features: int) -> None:
        self._input = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", features])
        self._nodes: list[Any] = []
        self._constants: list[Any] = []
        self.last = name

    def model(self) -> Any:
        graph = helper.make_graph(self._nodes, "keras", [self._input], [], self._constants)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        return model

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        out = f"k{len(self._nodes)}_{op_type.lower()}"
        self._nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        self.last = out
        return out

    def const(self, value: Any) -> str:
        name = f"c{len(self._constants)}"
        array = np.asarray(value, dtype=np.float32)
        self._constants.append(numpy_helper.from_array(array, name))
        return name

    def layer(self, kind: str, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
        """Append layer ``kind`` (its Keras class name) after the last tensor."""
        if kind == "InputLayer" or kind in PASS_THROUGH:
            return
        translate = _LAYERS.get(kind)
        if translate is None:
            raise LoadFailed(f"the Keras layer {kind} is not converted")
        translate(self, config, weights, layer)

    def activation(self, name: str | None) -> None:
        apply = _ACTIVATIONS.get(name or "linear")
        if apply is None:
            supported = ", ".join(sorted(_ACTIVATIONS))
            raise LoadFailed(f"the Keras activation {name!r} is not converted ({supported})")
        apply(self, self.last)


def _gelu(b: Builder, x: str) -> None:  # keras "gelu": the exact (erf) form
    scaled = b.op("Mul", x, b.const(1 / math.sqrt(2)))
    b.op("Mul", b.op("Mul", x, b.const(0.5)), b.op("Add", b.op("Erf", scaled), b.const(1.0)))


_ACTIVATIONS: dict[str, Callable[[Builder, str], Any]] = {
    "linear": lambda b, x: None,
    "relu": lambda b, x: b.op("Relu", x),
    "sigmoid": lambda b, x: b.op("Sigmoid", x),
    "tanh": lambda b, x: b.op("Tanh", x),
    "softmax": lambda b, x: b.op("Softmax", x, axis=-1),
    "elu": lambda b, x: b.op("Elu", x, alpha=1.0),
    "selu": lambda b, x: b.op("Selu", x),
    "softplus": lambda b, x: b.op("Softplus", x),
    "softsign": lambda b, x: b.op("Softsign", x),
    "gelu": _gelu,
    "silu": lambda b, x: b.op("Mul", x, b.op("Sigmoid", x)),
    "swish": lambda b, x: b.op("Mul", x, b.op("Sigmoid", x)),
    "relu6": lambda b, x: b.op("Clip", x, b.const(0.0), b.const(6.0)),
    "leaky_relu": lambda b, x: b.op("LeakyRelu", x, alpha=0.2),
    "exponential": lambda b, x: b.op("Exp", x),
    "hard_sigmoid": lambda b, x: b.op("HardSigmoid", x, alpha=1 / 6, beta=0.5),
}


def _dense(b: Builder, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
    out = b.op("MatMul", b.last, b.const(weights[0]))
    if config.get("use_bias", True):
        b.op("Add", out, b.const(weights[1]))
    b.activation(config.get("activation"))


def _relu(b: Builder, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
    slope, top = float(config.get("negative_slope") or 0), config.get("max_value")
    if float(config.get("threshold") or 0) != 0 or (slope and top is not None):
        raise LoadFailed("the Keras ReLU layer with a threshold or a capped slope is not converted")
    if slope:
        b.op("LeakyRelu", b.last, alpha=slope)
    elif top is not None:
        b.op("Clip", b.last, b.const(0.0), b.const(float(top)))
    else:
        b.op("Relu", b.last)


def _last_axis(config: dict[str, Any], kind: str) -> None:
    """Raise unless the layer works over the last axis (of a [batch, features] tensor)."""
    axis = config.get("axis", -1)
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    if axes not in ([-1], [1]):
        raise LoadFailed(f"the Keras {kind} layer over axis {axis} is not converted (only -1)")


def _softmax(b: Builder, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
    _last_axis(config, "Softmax")
    b.op("Softmax", b.last, axis=-1)


def _batch_norm(b: Builder, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
    _last_axis(config, "BatchNormalization")
    rest = list(weights)
    gamma = rest.pop(0) if config.get("scale", True) else None
    beta = rest.pop(0) if config.get("center", True) else None
    mean, variance = rest[0], rest[1]
    factor = (1 / np.sqrt(variance + np.float32(config.get("epsilon", 1e-3)))).astype(np.float32)
    if gamma is not None:
        factor = factor * gamma
    shift = -mean * factor if beta is None else beta - mean * factor
    b.op("Add", b.op("Mul", b.last, b.const(factor)), b.const(shift))


def _normalization(b: Builder, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
    _last_axis(config, "Normalization")
    if config.get("invert"):
        raise LoadFailed("the Keras Normalization layer with invert=True is not converted")
    mean = np.asarray(_numpy(layer.mean), dtype=np.float32).reshape(-1)
    spread = np.maximum(np.sqrt(np.asarray(_numpy(layer.variance), dtype=np.float32)), _EPSILON)
    b.op("Div", b.op("Sub", b.last, b.const(mean)), b.const(spread.reshape(-1)))


def _layer_norm(b: Builder, config: dict[str, Any], weights: list[Any], layer: Any) -> None:
    _last_axis(config, "LayerNormalization")
    if config.get("rms_scaling"):
        raise LoadFailed("the Keras LayerNormalization layer with rms_scaling is not converted")
    rest = list(weights)
    width = int(layer.input.shape[-1])
    gamma = rest.pop(0) if config.get("scale", True) else np.ones(width, np.float32)
    beta = rest.pop(0) if config.get("center", True) else np.zeros(width, np.float32)
    epsilon = float(config.get("epsilon", 1e-3))
    b.op("LayerNormalization", b.last, b.const(gamma), b.const(beta), axis=-1, epsilon=epsilon)


def _numpy(value: Any) -> Any:
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


_LAYERS: dict[str, Callable[[Builder, dict[str, Any], list[Any], Any], object]] = {
    "Dense": _dense,
    "Activation": lambda b, c, w, layer: b.activation(c.get("activation")),
    "ReLU": _relu,
    "LeakyReLU": lambda b, c, w, layer: b.op("LeakyRelu", b.last, alpha=float(c["negative_slope"])),
    "ELU": lambda b, c, w, layer: b.op("Elu", b.last, alpha=float(c.get("alpha", 1.0))),
    "Softmax": _softmax,
    "BatchNormalization": _batch_norm,
    "Normalization": _normalization,
    "LayerNormalization": _layer_norm,
    "Rescaling": lambda b, c, w, layer: b.op(
        "Add", b.op("Mul", b.last, b.const(c.get("scale", 1.0))), b.const(c.get("offset", 0.0))
    ),
}


def ending_of(kind: str, config: dict[str, Any]) -> Ending:
    """What the model's last (non pass-through) layer ends in, for ``network.head_for``."""
    name = config.get("activation") if kind in ("Dense", "Activation") else kind.lower()
    if name == "softmax":
        return "softmax"
    if name == "sigmoid":
        return "sigmoid"
    return "none" if name in (None, "linear") else "other"
