"""Declared top-k post-processing: a [N, labels] score output → the best labels and their scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import LoadFailed, PredictFailed
from tenantserve.runtimes.base import LoadedModel
from tenantserve.runtimes.grouped import Grouped, Parts, group_key
from tenantserve.runtimes.text import check_texts
from tenantserve.types import Tensors, TensorSpec, TopKPostprocess

MACROS = "macros"
"""The added output of label names, BYTES [N, k], best first."""
SCORES = "scores"
"""The added output of their scores, FP32 [N, k]."""

_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


def with_top_k(model: LoadedModel, labels: Sequence[str], step: TopKPostprocess) -> TopKModel:
    """``model`` with ``macros`` and ``scores`` outputs ranked from ``step.scores_output``.

    Raises:
        LoadFailed: the graph has no such float [N, L] output, L is not ``len(labels)``, or the
            graph already has an output named ``macros`` or ``scores``.
    """
    names = [spec.name for spec in model.outputs]
    spec = next((spec for spec in model.outputs if spec.name == step.scores_output), None)
    if spec is None:
        raise LoadFailed(
            f"postprocess.scores_output {step.scores_output!r} is not an output of the model "
            f"(outputs: {names})"
        )
    if spec.datatype not in _FLOAT_TYPES or len(spec.shape) != 2:
        raise LoadFailed(
            f"output {spec.name!r} is {spec.datatype} {list(spec.shape)}; "
            "top-k needs float scores [batch, labels]"
        )
    if spec.shape[1] not in (-1, len(labels)):
        raise LoadFailed(
            f"output {spec.name!r} holds {spec.shape[1]} scores per row but the manifest "
            f"has {len(labels)} labels"
        )
    clash = sorted({MACROS, SCORES} & set(names))
    if clash:
        raise LoadFailed(f"postprocess adds output {clash[0]!r}, which the model already has")
    return TopKModel(model, labels, step, batch=spec.shape[0])


class TopKModel:
    """A LoadedModel that keeps its outputs and adds the top-k labels with their scores.

    A classifier ranks every text it is given, a blank one too (a TF-IDF graph scores "" as
    the label prior); its text inputs therefore refuse empty or whitespace-only elements.
    """

    def __init__(
        self, model: LoadedModel, labels: Sequence[str], step: TopKPostprocess, *, batch: int
    ) -> None:
        self._model = model
        self._labels: npt.NDArray[Any] = np.array(list(labels), dtype=object)
        self._scores_output = step.scores_output
        self._k = min(step.top_k, len(labels))
        self._text_inputs = tuple(s.name for s in model.inputs if s.datatype == "BYTES")
        self._outputs = (
            *model.outputs,
            TensorSpec(MACROS, "BYTES", (batch, self._k)),
            TensorSpec(SCORES, "FP32", (batch, self._k)),
        )

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._model.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def platform(self) -> str:
        return self._model.platform

    @property
    def group_key(self) -> str | None:
        inner = group_key(self._model)
        return None if inner is None else f"topk|{inner}"

    def predict(self, tensors: Tensors) -> Tensors:
        self._check_texts(tensors)
        return self._ranked(self._model.predict(tensors))

    def predict_group(self, tensors: Tensors, parts: Parts) -> list[Tensors]:
        """The wrapped models' group run, each part's scores ranked by its own labels."""
        self._check_texts(tensors)
        inner: list[tuple[LoadedModel, int]] = []
        for model, rows in parts:
            if not isinstance(model, TopKModel):
                raise TypeError("a group of top-k models holds another model")
            inner.append((model._model, rows))
        wrapped = self._model
        if not isinstance(wrapped, Grouped):
            raise TypeError("a top-k model without a group key was run in a group")
        results = wrapped.predict_group(tensors, inner)
        return [
            model._ranked(result)
            for (model, _), result in zip(parts, results, strict=True)
            if isinstance(model, TopKModel)
        ]

    def _check_texts(self, tensors: Tensors) -> None:
        for name in self._text_inputs:
            array = tensors.get(name)
            # Other dtypes and missing inputs are the wrapped model's to refuse, in its words.
            if array is not None and array.dtype.kind in ("O", "U", "S"):
                check_texts(name, array)

    def _ranked(self, outputs: Tensors) -> Tensors:
        result = dict(outputs)
        scores = result.get(self._scores_output)
        if scores is None or scores.ndim != 2 or scores.shape[1] != len(self._labels):
            shape = None if scores is None else list(scores.shape)
            raise PredictFailed(
                f"output {self._scores_output!r} came back as {shape}; "
                f"expected [batch, {len(self._labels)}] for the manifest's labels"
            )
        # Stable, so tied scores keep the manifest's label order; NaN sorts last.
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self._k]
        result[MACROS] = self._labels[order]
        result[SCORES] = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        return result

    def close(self) -> None:
        self._model.close()
