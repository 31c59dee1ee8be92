"""Decoded JSON values → numpy arrays of a declared OIP datatype, refusing lossy conversions."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import InvalidInput
from tenantserve.types import DATATYPE_TO_DTYPE

MAX_RANK = 32
"""Deepest nesting accepted; numpy itself stops at 64 (32 in some paths), no model needs more."""

# numpy signals impossible nesting with any of these, depending on the path it takes.
_NUMPY_SHAPE_ERRORS = (ValueError, TypeError, RuntimeError, RecursionError)


def to_array(name: str, datatype: str, data: Any) -> npt.NDArray[Any]:
    """``data`` (nested lists as ``orjson`` returns them) as an array of ``datatype``.

    The nesting gives the shape; ragged lists are refused. Numbers must fit the datatype:
    integers for integer types (in range), numbers for float types (no finite value may overflow
    to infinity), booleans for BOOL, strings for BYTES. Errors name
    the tensor ``name``.

    Raises:
        InvalidInput: anything that is not a regular array of that datatype.
    """
    if _depth(data) > MAX_RANK:
        raise InvalidInput(f"input {name!r}: data nests deeper than {MAX_RANK} levels")
    if datatype == "BYTES":
        return _strings(name, data)
    target = DATATYPE_TO_DTYPE[datatype]
    try:
        # Let numpy infer first: converting straight to the target would parse "1.5" strings
        # and wrap some out-of-range values; the inferred kind says what was really sent.
        found = np.asarray(data)
    except _NUMPY_SHAPE_ERRORS:
        raise InvalidInput(f"input {name!r}: data is not a regular (non-ragged) array") from None
    kind = found.dtype.kind
    if target.kind == "b":
        if kind != "b":
            raise InvalidInput(f"input {name!r}: {datatype} data must be true or false")
        return found
    if target.kind in "iu":
        if kind not in "iu":
            # numpy infers float64 for integers that share no integer type (1 and 2**64 - 1):
            # look at what was really sent before refusing.
            return _exact_integers(name, datatype, data)  # refuses what is not an integer
        limits = np.iinfo(target)
        if found.size and (found.min() < limits.min or found.max() > limits.max):
            raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
        return found.astype(target)
    if kind not in "iuf":
        raise InvalidInput(f"input {name!r}: {datatype} data must be numbers")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = found.astype(target)
    # Only a value finite before and infinite after overflowed; a NaN a CSV row carried on
    # purpose (a missing value) passes through.
    if not (np.isfinite(converted) | ~np.isfinite(found)).all():
        raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}")
    return converted


def _exact_integers(name: str, datatype: str, data: Any) -> npt.NDArray[Any]:
    try:
        exact = np.array(data, dtype=object)
    except _NUMPY_SHAPE_ERRORS:
        raise InvalidInput(f"input {name!r}: data is not a regular (non-ragged) array") from None
    if not all(type(item) is int for item in exact.flat):
        raise InvalidInput(f"input {name!r}: {datatype} data must be integers")
    try:
        return exact.astype(DATATYPE_TO_DTYPE[datatype])
    except OverflowError:
        raise InvalidInput(f"input {name!r}: a value is out of range for {datatype}") from None


def _strings(name: str, data: Any) -> npt.NDArray[Any]:
    try:
        array: npt.NDArray[Any] = np.array(data, dtype=object)
    except _NUMPY_SHAPE_ERRORS:
        raise InvalidInput(f"input {name!r}: data is not a regular (non-ragged) array") from None
    # An object array of a ragged list holds the inner lists; this check refuses those too.
    if not all(type(item) is str for item in array.flat):
        raise InvalidInput(f"input {name!r}: BYTES data must be a regular array of strings")
    return array


def _depth(data: Any) -> int:
    # Follows the first element only: enough to refuse a 10,000-level nesting before numpy
    # walks it; deeper ragged branches elsewhere are caught as ragged by numpy.
    depth = 0
    while isinstance(data, list) and depth <= MAX_RANK:
        depth += 1
        data = data[0] if data else None
    return depth
