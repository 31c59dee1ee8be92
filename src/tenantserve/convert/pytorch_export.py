"""PyTorch programs (``pytorch.pt2``, ``torch.export.save``), converted by ``torch.onnx``.

The archive is checked as data first (``pt2_archive``); ``torch.export.load`` then reads the
checked copy, which holds raw tensors and the program's JSON only. The program must take one
float tensor ``[batch, features]`` with the batch dimension dynamic
(``dynamic_shapes=({0: torch.export.Dim("batch")},)``) and end in one tensor; ``network``
says what that tensor means.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxscript
import torch

from tenantserve.convert.base import INPUT, Rows, Tolerance
from tenantserve.convert.network import Ending, Head, Network, head_for
from tenantserve.convert.pt2_archive import checked_copy
from tenantserve.errors import LoadFailed

_ENDINGS: dict[str, Ending] = {
    "softmax": "softmax",
    "_softmax": "softmax",
    "sigmoid": "sigmoid",
    "linear": "none",
    "addmm": "none",
    "add": "none",
    "mm": "none",
    "matmul": "none",
}


class _Program(Network):
    def __init__(self, program: Any, n_features: int, head: Head) -> None:
        super().__init__(n_features, head)
        self._program = program
        self._module = program.module()

    def last(self, rows: Rows) -> npt.NDArray[Any]:
        with torch.no_grad():
            out: npt.NDArray[Any] = self._module(
                torch.from_numpy(np.ascontiguousarray(rows))
            ).numpy()
        return out

    def to_onnx(self) -> Any:
        example = (torch.zeros((2, self.n_features), dtype=torch.float32),)
        # The exporter logs a line per torchvision operator it skips and warns of its own
        # deprecations: noise in a conversion's log, none of it about this model.
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exported = torch.onnx.export(
                self._program, example, dynamo=True, verbose=False, optimize=True
            )
        if exported is None:
            raise LoadFailed("torch.onnx made no ONNX program of the PyTorch model")
        model = exported.model_proto
        graph = model.graph
        old = graph.input[0].name
        for node in graph.node:
            node.input[:] = [INPUT if name == old else name for name in node.input]
        graph.input[0].name = INPUT
        return self.head.finish(model, graph.output[0].name)


class PyTorchConverter:
    # The same float32 arithmetic in another order (matrix products, softmax).
    tolerance = Tolerance(atol=1e-5, rtol=1e-4)
    versions = (
        f"torch={torch.__version__};onnxscript={onnxscript.__version__};onnx={onnx.__version__}"
    )

    def open(self, path: Path) -> _Program:
        with tempfile.TemporaryDirectory(prefix="tenantserve-pt2-") as scratch:
            copy = checked_copy(path, Path(scratch))
            try:
                program = torch.export.load(copy)
            except Exception as exc:  # torch raises anything on a malformed program
                reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                raise LoadFailed(f"pytorch.pt2 could not be read: {reason}") from None
        n_features = _features(program)
        return _Program(program, n_features, _head(program))


def _features(program: Any) -> int:
    inputs = program.graph_signature.user_inputs
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if len(inputs) != 1 or inputs[0] not in placeholders:
        raise LoadFailed(f"the PyTorch program takes {len(inputs)} inputs; one tensor is served")
    value = placeholders[inputs[0]].meta.get("val")
    shape = list(getattr(value, "shape", []))
    if len(shape) != 2 or getattr(value, "dtype", None) != torch.float32:
        raise LoadFailed(
            f"the PyTorch program's input is {getattr(value, 'dtype', '?')} of shape {shape}: "
            "a float32 [batch, features] tensor is served"
        )
    if isinstance(shape[0], int) or not isinstance(shape[1], int):
        raise LoadFailed(
            "the PyTorch program's batch dimension is fixed: export it with "
            'dynamic_shapes=({0: torch.export.Dim("batch")},)'
        )
    return int(shape[1])


def _head(program: Any) -> Head:
    outputs = program.graph_signature.user_outputs
    if len(outputs) != 1:
        raise LoadFailed(f"the PyTorch program returns {len(outputs)} values; one is served")
    node = next(n for n in program.graph.nodes if n.name == outputs[0])
    shape = list(getattr(node.meta.get("val"), "shape", []))
    if len(shape) not in (1, 2) or (len(shape) == 2 and not isinstance(shape[1], int)):
        raise LoadFailed(f"the PyTorch program returns shape {shape}: [batch, k] is served")
    columns = int(shape[1]) if len(shape) == 2 else 1
    op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
    return head_for(columns, _ENDINGS.get(op, "other"), "PyTorch")


CONVERTER = PyTorchConverter()
