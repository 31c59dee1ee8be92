"""Native file names → frameworks; a framework that cannot be imported names its extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tenantserve.convert.registry import (
    NATIVE_FILES,
    converter_for,
    framework_for,
    installed_versions,
    native_file,
)
from tenantserve.errors import LoadFailed, MissingExtra


def test_each_native_file_names_its_framework_and_onnx_none() -> None:
    assert NATIVE_FILES == (
        "sklearn.skops", "xgboost.json", "xgboost.ubj", "lightgbm.txt", "pytorch.pt2", "keras.keras"
    )  # fmt: skip
    assert framework_for("xgboost.ubj") is not None
    assert framework_for("xgboost.ubj").extra == "xgboost"  # type: ignore[union-attr]
    assert framework_for("lightgbm.txt").name == "LightGBM"  # type: ignore[union-attr]
    assert framework_for("model.onnx") is None


def test_native_file_is_found_in_a_folder(tmp_path: Path) -> None:
    assert native_file(tmp_path) is None
    (tmp_path / "lightgbm.txt").write_text("tree\n")
    assert native_file(tmp_path) == "lightgbm.txt"
    (tmp_path / "xgboost.json").write_text("{}")
    assert native_file(tmp_path) == "xgboost.json"  # the registry's order decides


def test_a_framework_that_cannot_be_imported_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # as when the extra is not installed
    monkeypatch.delitem(sys.modules, "tenantserve.convert.lightgbm_booster", raising=False)
    framework = framework_for("lightgbm.txt")
    assert framework is not None
    with pytest.raises(MissingExtra, match=r"pip install 'tenantserve\[lightgbm\]'") as caught:
        converter_for(framework)
    assert isinstance(caught.value, LoadFailed)  # a failed load to the cache, 501 to callers
    assert "lightgbm" in str(caught.value)


def test_installed_versions_are_found_without_importing_and_a_gap_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    framework = framework_for("xgboost.json")
    assert framework is not None
    versions = installed_versions(framework)
    assert versions.startswith("xgboost=3.2.0;onnxmltools=1.16.0;onnx=")  # xgboost-cpu's
    monkeypatch.setitem(sys.modules, "onnxmltools", None)
    with pytest.raises(MissingExtra, match=r"tenantserve\[xgboost\]'; missing: onnxmltools"):
        installed_versions(framework)


def test_an_installed_framework_gives_its_converter() -> None:
    framework = framework_for("sklearn.skops")
    assert framework is not None
    converter = converter_for(framework)
    assert "skl2onnx=" in converter.versions
    assert converter.tolerance.atol > 0


@pytest.mark.parametrize(
    ("file", "blocked", "extra"),
    [("pytorch.pt2", "torch", "torch"), ("pytorch.pt2", "onnxscript", "torch"),
     ("keras.keras", "keras", "keras"), ("keras.keras", "torch", "keras")],
)  # fmt: skip
def test_pytorch_and_keras_name_their_extra_when_missing(
    monkeypatch: pytest.MonkeyPatch, file: str, blocked: str, extra: str
) -> None:
    framework = framework_for(file)
    assert framework is not None
    assert installed_versions(framework).startswith(f"{framework.imports[0]}=")
    monkeypatch.setitem(sys.modules, blocked, None)  # as when the extra is not installed
    with pytest.raises(MissingExtra, match=rf"tenantserve\[{extra}\]'; missing: {blocked}"):
        installed_versions(framework)
