"""Artifact file name → framework; its converter is imported only when a file needs it.

A server without a framework's extra still serves everything else: the import fails only for
the artifacts of that framework, with an error naming the extra to install.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tenantserve.convert.base import Converter
from tenantserve.errors import LoadFailed, MissingExtra

# What a conversion makes, in its folder of the disk tier or `tenantserve convert`'s --out.
ONNX_FILE = "model.onnx"
REPORT_FILE = "conversion.json"


@dataclass(frozen=True, slots=True)
class Framework:
    """A framework whose native files are converted: ``module`` holds its ``CONVERTER``,
    which imports ``imports`` (what the ``extra`` installs)."""

    name: str
    files: tuple[str, ...]
    module: str
    extra: str
    imports: tuple[str, ...]


FRAMEWORKS: tuple[Framework, ...] = (
    Framework(
        "scikit-learn",
        ("sklearn.skops",),
        "tenantserve.convert.sklearn_skops",
        "sklearn",
        ("sklearn", "skops", "skl2onnx", "onnx"),
    ),
    Framework(
        "XGBoost",
        ("xgboost.json", "xgboost.ubj"),
        "tenantserve.convert.xgboost_booster",
        "xgboost",
        ("xgboost", "onnxmltools", "onnx"),
    ),
    Framework(
        "LightGBM",
        ("lightgbm.txt",),
        "tenantserve.convert.lightgbm_booster",
        "lightgbm",
        ("lightgbm", "onnxmltools", "onnx"),
    ),
    Framework(
        "PyTorch",
        ("pytorch.pt2",),
        "tenantserve.convert.pytorch_export",
        "torch",
        ("torch", "onnxscript", "onnx"),
    ),
    Framework(
        "Keras",
        ("keras.keras",),
        "tenantserve.convert.keras_model",
        "keras",
        ("keras", "torch", "onnx"),
    ),
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


def installed_versions(framework: Framework) -> str:
    """The versions of what converts ``framework``'s files (``xgboost=3.2.0;…``), found
    without importing any of it: the server converts in a child process.

    Raises:
        MissingExtra: one of them is not installed.
    """
    versions = []
    for name in framework.imports:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None (blocked)
            found = False
        if not found:
            raise _missing(framework, name)
        versions.append(f"{name}={_version_of(name)}")
    return ";".join(versions)


@functools.cache
def _version_of(module: str) -> str:
    distributions = importlib.metadata.packages_distributions().get(module, [])
    for distribution in distributions:  # xgboost's module comes from xgboost or xgboost-cpu
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _missing(framework: Framework, name: object) -> MissingExtra:
    return MissingExtra(
        f"{framework.name} models need the converter this server lacks "
        f"(pip install 'tenantserve[{framework.extra}]'; missing: {name})"
    )


def converter_for(framework: Framework) -> Converter:
    """The framework's converter, imported now.

    Raises:
        MissingExtra: the framework or its converter is not installed.
    """
    try:
        module = importlib.import_module(framework.module)
    except ImportError as exc:
        raise _missing(framework, exc.name or exc) from None
    converter = getattr(module, "CONVERTER", None)
    if converter is None:
        raise LoadFailed(f"{framework.module} has no CONVERTER")
    result: Converter = converter
    return result
