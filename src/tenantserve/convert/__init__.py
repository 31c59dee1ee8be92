"""Native artifacts (scikit-learn, XGBoost, LightGBM) converted to ONNX, with proof.

The framework is needed only here, to convert; the server serves the ONNX result. Nothing in
a tenant's file is unpickled or executed: boosters are read as data (JSON, UBJSON, LightGBM's
text), and skops files only with an explicit list of trusted types. See docs/frameworks.md.

Importing this package imports no framework and not ``onnx``: ``run.convert_artifact`` and
the converters import them, on first use.
"""

from __future__ import annotations

from tenantserve.convert.registry import (
    FRAMEWORKS,
    NATIVE_FILES,
    Framework,
    converter_for,
    framework_for,
    native_file,
)

__all__ = [
    "FRAMEWORKS",
    "NATIVE_FILES",
    "Framework",
    "converter_for",
    "framework_for",
    "native_file",
]
