"""Keras 3 models (``keras.keras``), converted layer by layer into an ONNX graph.

Keras runs here on its PyTorch backend (no TensorFlow), only to load the checked file with
safe mode on and to predict the rows the proof compares; the graph is written from each
layer's configuration and weights (``keras_layers``), so what is served is exactly the layers
that were checked. Input: ``[batch, features]`` float32; the last layer's activation says
what the model answers (``network``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

# Keras picks its backend on import: PyTorch's, whatever the environment says.
os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
import numpy.typing as npt
import onnx
import torch

from tenantserve.convert.base import INPUT, Rows, Tolerance
from tenantserve.convert.keras_archive import PASS_THROUGH, checked_copy
from tenantserve.convert.keras_layers import Builder, ending_of
from tenantserve.convert.network import Head, Network, head_for
from tenantserve.errors import LoadFailed


class _Model(Network):
    def __init__(self, model: Any, layers: list[Any], n_features: int, head: Head) -> None:
        super().__init__(n_features, head)
        self._model = model
        self._layers = layers

    def last(self, rows: Rows) -> npt.NDArray[Any]:
        with torch.no_grad():
            return np.asarray(keras.ops.convert_to_numpy(self._model(rows, training=False)))

    def to_onnx(self) -> Any:
        builder = Builder(INPUT, self.n_features)
        for layer in self._layers:
            builder.layer(type(layer).__name__, layer.get_config(), _weights(layer), layer)
        return self.head.finish(builder.model(), builder.last)


def _weights(layer: Any) -> list[np.ndarray[Any, Any]]:
    return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]


class KerasConverter:
    # Keras on PyTorch computes in float32 as the graph does, in another order.
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)
    versions = f"keras={keras.__version__};torch={torch.__version__};onnx={onnx.__version__}"

    def open(self, path: Path) -> _Model:
        with tempfile.TemporaryDirectory(prefix="tenantserve-keras-") as scratch:
            copy, order = checked_copy(path, Path(scratch))
            try:
                model = keras.saving.load_model(copy, compile=False, safe_mode=True)
            except Exception as exc:  # Keras raises anything on a malformed file
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise LoadFailed(f"keras.keras could not be read: {reason}") from None
        shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else ()
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise LoadFailed(
                f"the Keras model takes {shape or 'several inputs'}: one [batch, features] "
                "input is served"
            )
        by_name = {layer.name: layer for layer in model.layers}
        layers = [by_name[name] for name in order if name in by_name]
        kept = [layer for layer in layers if type(layer).__name__ not in PASS_THROUGH]
        last = kept[-1] if kept else None
        columns = int(model.outputs[0].shape[-1] or 0)
        if len(model.outputs) != 1 or last is None or len(model.outputs[0].shape) != 2:
            raise LoadFailed("the Keras model must end in one [batch, k] output")
        head = head_for(columns, ending_of(type(last).__name__, last.get_config()), "Keras")
        return _Model(model, layers, int(shape[1]), head)


CONVERTER = KerasConverter()
