"""What a framework's converter gives: the original model, its ONNX form, its tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

Kind = Literal["classifier", "regressor"]
Rows = npt.NDArray[np.float32]
Outputs = dict[str, npt.NDArray[Any]]

# The converted model's tensors, as users of these frameworks expect them.
INPUT = "input"
LABEL = "label"
PROBABILITIES = "probabilities"
PREDICTIONS = "predictions"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """Outputs agree when ``|converted - original| <= atol + rtol * |original|``."""

    atol: float
    rtol: float

    def __str__(self) -> str:
        return f"{self.atol:g} + {self.rtol:g} x |value|"


class Original(Protocol):
    """A model as its own framework loaded it: what the converted one must match."""

    @property
    def kind(self) -> Kind: ...

    @property
    def n_features(self) -> int: ...

    def predict(self, rows: Rows) -> Outputs:
        """``label`` and ``probabilities`` (classifiers) or ``predictions`` (regressors)."""
        ...

    def to_onnx(self) -> Any:
        """An ``onnx.ModelProto`` taking ``input`` [N, n_features] FP32 (outputs as made)."""
        ...


class Converter(Protocol):
    """One framework's converter (a module's ``CONVERTER``)."""

    @property
    def tolerance(self) -> Tolerance: ...

    @property
    def versions(self) -> str:
        """The libraries that make the result, with versions: a new one converts anew."""
        ...

    def open(self, path: Path) -> Original:
        """Read the artifact's file as data. Raises ``LoadFailed`` naming what is wrong."""
        ...
