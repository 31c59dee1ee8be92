"""Artifact file name → framework; its converter is imported only when a file needs it.

A server without a framework's extra still serves everything else: the import fails only for
the artifacts of that framework, with an error naming the extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from tenantserve.convert.base import Converter
from tenantserve.errors import LoadFailed, MissingExtra

# What a conversion makes, in its folder of the disk tier or `tenantserve convert`'s --out.
ONNX_FILE = "model.onnx"
REPORT_FILE = "conversion.json"


@dataclass(frozen=True, slots=True)
class Framework:
    """A framework whose native files are converted: ``module`` holds its ``CONVERTER``."""

    name: str
    files: tuple[str, ...]
    module: str
    extra: str


FRAMEWORKS: tuple[Framework, ...] = (
    Framework("scikit-learn", ("sklearn.skops",), "tenantserve.convert.sklearn_skops", "sklearn"),
    Framework(
        "XGBoost", ("xgboost.json", "xgboost.ubj"), "tenantserve.convert.xgboost_booster", "xgboost"
    ),
    Framework("LightGBM", ("lightgbm.txt",), "tenantserve.convert.lightgbm_booster", "lightgbm"),
)
NATIVE_FILES: tuple[str, ...] = tuple(name for fw in FRAMEWORKS for name in fw.files)


def framework_for(model_file: str) -> Framework | None:
    """The framework whose native file ``model_file`` is, or ``None`` (ONNX and the rest)."""
    for framework in FRAMEWORKS:
        if model_file in framework.files:
            return framework
    return None


def native_file(folder: Path) -> str | None:
    """The first native file in ``folder`` (in :data:`NATIVE_FILES` order), if any."""
    for name in NATIVE_FILES:
        if (folder / name).is_file():
            return name
    return None


def converter_for(framework: Framework) -> Converter:
    """The framework's converter, imported now.

    Raises:
        MissingExtra: the framework or its converter is not installed.
    """
    try:
        module = importlib.import_module(framework.module)
    except ImportError as exc:
        raise MissingExtra(
            f"{framework.name} models need the converter this server lacks "
            f"(pip install 'tenantserve[{framework.extra}]'; missing: {exc.name or exc})"
        ) from None
    converter = getattr(module, "CONVERTER", None)
    if converter is None:
        raise LoadFailed(f"{framework.module} has no CONVERTER")
    result: Converter = converter
    return result
