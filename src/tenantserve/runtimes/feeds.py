"""A model's inputs checked against its signature, converted only where no value can change."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import InvalidInput
from tenantserve.types import DATATYPE_TO_DTYPE, Tensors, TensorSpec


def conformed_feed(specs: tuple[TensorSpec, ...], tensors: Tensors) -> Tensors:
    """Every input of ``specs`` from ``tensors``, checked; ``InvalidInput`` names the culprit."""
    # Unknown names first: a misspelt input is reported as such, not as a missing one.
    extra = sorted(set(tensors) - {spec.name for spec in specs})
    if extra:
        expected = ", ".join(spec.name for spec in specs)
        raise InvalidInput(f"unexpected input {extra[0]!r}; the model takes: {expected}")
    return {spec.name: conform(spec, tensors.get(spec.name)) for spec in specs}


def conform(spec: TensorSpec, array: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """Check one input against the graph, converting only where no value can change."""
    if array is None:
        raise InvalidInput(f"missing input {spec.name!r}")
    if len(spec.shape) != array.ndim:
        raise InvalidInput(
            f"input {spec.name!r} has shape {list(array.shape)}; "
            f"the model expects {len(spec.shape)} dimensions {list(spec.shape)}"
        )
    for want, got in zip(spec.shape, array.shape, strict=True):
        if want not in (-1, got):
            raise InvalidInput(
                f"input {spec.name!r} has shape {list(array.shape)}; "
                f"the model expects {list(spec.shape)}"
            )
    if spec.datatype == "BYTES":
        if array.dtype.kind not in ("O", "U", "S"):
            raise InvalidInput(f"input {spec.name!r} must be BYTES (text), not {array.dtype}")
        return _as_text(spec.name, array)
    want_dtype = DATATYPE_TO_DTYPE[spec.datatype]
    if array.dtype != want_dtype:
        if array.dtype.kind in ("O", "U", "S") or not np.can_cast(array.dtype, want_dtype, "safe"):
            raise InvalidInput(
                f"input {spec.name!r} has datatype {array.dtype}; the model expects {spec.datatype}"
            )
        array = array.astype(want_dtype)
    return array


def _as_text(name: str, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"input {name!r} element {i} is not valid UTF-8") from exc
        elif not isinstance(item, str):
            raise InvalidInput(f"input {name!r} element {i} is not text")
        out[i] = item
    return out.reshape(array.shape)
