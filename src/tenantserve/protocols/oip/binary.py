"""Triton's binary tensor layout: raw little-endian elements; BYTES items carry a 4-byte length."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import InvalidInput
from tenantserve.types import DATATYPE_TO_DTYPE

_LENGTH = struct.Struct("<I")


def tensor_from_bytes(
    name: str, datatype: str, shape: list[int], count: int, raw: memoryview
) -> npt.NDArray[Any]:
    """Decode one input's ``binary_data_size`` bytes; the array has ``shape``.

    Fixed-size types are viewed in place (no copy) unless the view would be misaligned.
    BYTES elements are decoded as UTF-8 text, since models (ONNX string tensors) take str.
    """
    if datatype == "BYTES":
        items = _split_bytes(name, raw, count)
        array: npt.NDArray[Any] = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DATATYPE_TO_DTYPE[datatype].newbyteorder("<")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input {name!r}: binary_data_size is {len(raw)} bytes but shape {shape} of "
            f"{datatype} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def tensor_to_bytes(array: npt.NDArray[Any], datatype: str) -> bytes:
    """Encode one output in the binary layout tritonclient's ``as_numpy`` reads."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    dtype = DATATYPE_TO_DTYPE[datatype].newbyteorder("<")
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _split_bytes(name: str, raw: memoryview, count: int) -> list[str]:
    items: list[str] = []
    pos = 0
    end = len(raw)
    while pos < end:
        if len(items) == count:
            raise InvalidInput(f"input {name!r}: binary BYTES data holds more than {count} items")
        if pos + _LENGTH.size > end:
            raise InvalidInput(f"input {name!r}: binary BYTES data ends inside a length prefix")
        (length,) = _LENGTH.unpack_from(raw, pos)
        pos += _LENGTH.size
        if pos + length > end:
            raise InvalidInput(
                f"input {name!r}: binary BYTES item {len(items)} claims {length} bytes, "
                f"only {end - pos} remain"
            )
        try:
            items.append(str(raw[pos : pos + length], "utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r}: binary BYTES item {len(items)} is not valid UTF-8"
            ) from exc
        pos += length
    if len(items) != count:
        raise InvalidInput(
            f"input {name!r}: shape needs {count} BYTES items, data has {len(items)}"
        )
    return items
