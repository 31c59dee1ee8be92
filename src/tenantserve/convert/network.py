"""Neural networks (PyTorch, Keras) end in one tensor; served, they answer as the others do.

A network's last tensor is ``[N, k]`` (or ``[N]``). What it means follows from its shape and
its last operation, the same rule for both frameworks:

- one column, a sigmoid last: a binary classifier (``probabilities`` ``[1 - p, p]``);
- one column otherwise: a regressor (``predictions``);
- ``k > 1`` columns, a softmax last: a classifier whose columns are its probabilities;
- ``k > 1`` columns, no activation last: a classifier's logits (a softmax is added).

Anything else (several columns after a ReLU, say) is refused: it is neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from onnx import TensorProto, helper

from tenantserve.convert.base import LABEL, PREDICTIONS, PROBABILITIES, Kind, Outputs, Rows
from tenantserve.errors import LoadFailed

Ending = Literal["sigmoid", "softmax", "none", "other"]


@dataclass(frozen=True, slots=True)
class Head:
    """How a network's last tensor becomes the served outputs."""

    kind: Kind
    columns: int
    ending: Ending

    def outputs(self, last: npt.NDArray[Any]) -> Outputs:
        """What the original network's ``last`` tensor answers, computed as the graph will."""
        values = np.asarray(last, dtype=np.float32).reshape(len(last), -1)
        if self.kind == "regressor":
            return {PREDICTIONS: values.reshape(-1)}
        if self.columns == 1:  # sigmoid: the probability of class 1
            scores = np.concatenate([1 - values, values], axis=1).astype(np.float32)
        elif self.ending == "softmax":
            scores = values
        else:
            shifted = values.astype(np.float64) - values.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            scores = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return {LABEL: scores.argmax(axis=1).astype(np.int64), PROBABILITIES: scores}

    def finish(self, model: Any, last: str) -> Any:
        """Append to ``model`` (an ``onnx.ModelProto``) the nodes that turn tensor ``last``
        into ``label`` and ``probabilities`` (classifier) or keep it as the one output
        (regressor), in the order ``graph.finish`` takes them."""
        graph = model.graph
        del graph.output[:]
        if self.kind == "regressor":
            graph.output.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, None))
            return model
        scores = "network_probabilities"
        if self.columns == 1:
            one = "network_one"
            graph.initializer.append(helper.make_tensor(one, TensorProto.FLOAT, [], [1.0]))
            graph.node.extend(
                [
                    helper.make_node("Sub", [one, last], ["network_not"]),
                    helper.make_node("Concat", ["network_not", last], [scores], axis=1),
                ]
            )
        elif self.ending == "softmax":
            graph.node.append(helper.make_node("Identity", [last], [scores]))
        else:
            graph.node.append(helper.make_node("Softmax", [last], [scores], axis=1))
        graph.node.append(
            helper.make_node("ArgMax", [scores], ["network_label"], axis=1, keepdims=0)
        )
        graph.output.extend(
            [
                helper.make_tensor_value_info("network_label", TensorProto.INT64, None),
                helper.make_tensor_value_info(scores, TensorProto.FLOAT, None),
            ]
        )
        return model


class Network(ABC):
    """A network as its framework loaded it (a ``base.Original``): what it answers is its last
    tensor on the rows, through its head."""

    def __init__(self, n_features: int, head: Head) -> None:
        self.n_features = n_features
        self.head = head
        self.kind: Kind = head.kind

    @abstractmethod
    def last(self, rows: Rows) -> npt.NDArray[Any]:
        """The network's last tensor on ``rows``, as its framework computes it."""

    def predict(self, rows: Rows) -> Outputs:
        return self.head.outputs(self.last(rows))


def head_for(columns: int, ending: Ending, framework: str) -> Head:
    """The head of a network whose last tensor has ``columns`` columns after ``ending``.

    Raises:
        LoadFailed: the network's end is neither a classifier's nor a regressor's.
    """
    if columns == 1:
        return Head("classifier" if ending == "sigmoid" else "regressor", 1, ending)
    if ending in ("softmax", "none"):
        return Head("classifier", columns, ending)
    raise LoadFailed(
        f"the {framework} model's last {columns} columns come from neither a softmax nor a "
        "linear layer: end a classifier in a softmax (or raw logits), a regressor in one column"
    )
