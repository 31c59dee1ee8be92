"""Versions in a store folder (Triton's layout), aliases.json, and which version a name picks."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from tenantserve.errors import InvalidModelId, LoadFailed, ModelNotFound
from tenantserve.store.versions import (
    ModelVersions,
    choose,
    choose_unversioned,
    folder_versions,
    parse_aliases,
    read_versions,
    split_version,
)
from tenantserve.types import ModelId, ModelRef

MARKERS = ("model.json", "model.onnx")
MACROS = ModelId.parse("acme/macros")


def test_numbered_folders_are_versions_unless_the_folder_has_its_own_model() -> None:
    assert folder_versions(["aliases.json"], ["2", "10", "1", "01", "0", "x"], MARKERS) == (
        1,
        2,
        10,
    )
    # A folder with its own model file stays one model, as before versions existed.
    assert folder_versions(["model.onnx"], ["1", "2"], MARKERS) == ()
    assert folder_versions([], ["model", "v2"], MARKERS) == ()


def test_a_bare_name_serves_stable_else_the_highest_version() -> None:
    plain = ModelVersions((1, 2, 3))
    assert choose(MACROS, plain, "").key == ModelId.parse("acme/macros/3")
    pinned = ModelVersions((1, 2, 3), {"stable": 2, "canary": 3})
    chosen = choose(MACROS, pinned, "")
    assert (chosen.name, chosen.version, chosen.key.value) == (MACROS, "2", "acme/macros/2")
    assert choose(MACROS, pinned, "canary").version == "3"
    assert choose(MACROS, pinned, "1").key.value == "acme/macros/1"


def test_unknown_versions_and_aliases_name_what_the_model_has() -> None:
    found = ModelVersions((1, 2), {"stable": 1})
    with pytest.raises(
        ModelNotFound, match=r"^model acme/macros has no version 7 \(versions: 1, 2\)$"
    ):
        choose(MACROS, found, "7")
    with pytest.raises(ModelNotFound, match=r"has no alias 'beta' \(aliases: stable\)$"):
        choose(MACROS, found, "beta")
    with pytest.raises(ModelNotFound, match="no numbered version folders, so it serves version 1"):
        choose_unversioned(MACROS, "2")
    with pytest.raises(ModelNotFound, match="has no alias 'stable'"):
        choose_unversioned(MACROS, "stable")
    assert choose_unversioned(MACROS, "1").key == MACROS


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"{", "is not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"stable": 9}', "names version 9, which the model does not have"),
        (b'{"stable": true}', "must name a version number"),
        (b'{"stable": "x"}', "must name a version number"),
        (b'{"2": 1}', "is not an alias name"),
        (b'{"bad name": 1}', "is not an alias name"),
    ],
)
def test_a_bad_aliases_file_is_refused_naming_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(LoadFailed, match=problem) as caught:
        parse_aliases(raw, MACROS, (1, 2))
    assert str(caught.value).startswith("aliases.json of model acme/macros")


def test_aliases_take_numbers_or_number_strings() -> None:
    assert parse_aliases(b'{"stable": 1, "canary": "2"}', MACROS, (1, 2)) == {
        "stable": 1,
        "canary": 2,
    }


def test_read_versions_from_a_folder(tmp_path: Path) -> None:
    for version in ("1", "2"):
        (tmp_path / "acme/macros" / version).mkdir(parents=True)
        (tmp_path / "acme/macros" / version / "model.onnx").write_bytes(b"x")
    (tmp_path / "acme/macros/aliases.json").write_text('{"stable": 1}')
    (tmp_path / "acme/plain").mkdir()
    (tmp_path / "acme/plain/model.onnx").write_bytes(b"x")
    (tmp_path / "acme/m.tar.gz").write_bytes(b"x")
    fs, root = LocalFileSystem(), str(tmp_path)
    found = read_versions(fs, f"{root}/acme/macros", MACROS, MARKERS)
    assert found == ModelVersions((1, 2), {"stable": 1})
    assert read_versions(fs, f"{root}/acme/plain", MACROS, MARKERS) is None
    assert read_versions(fs, f"{root}/acme/m.tar.gz", MACROS, MARKERS) is None


def test_listed_version_paths_split_into_name_and_version() -> None:
    assert split_version("acme/macros/2") == ("acme/macros", "2")
    assert split_version("acme/macros") == ("acme/macros", "1")
    assert split_version("acme/v2") == ("acme/v2", "1")


def test_references_name_a_version_after_at_or_separately() -> None:
    assert ModelRef.parse("acme/macros@2") == ModelRef(MACROS, "2")
    assert ModelRef.parse("acme/macros@stable") == ModelRef(MACROS, "stable")
    assert ModelRef.parse("acme/macros", "3") == ModelRef(MACROS, "3")
    assert ModelRef.parse("acme/macros@3", "3") == ModelRef(MACROS, "3")
    assert str(ModelRef.parse("acme/macros@canary")) == "acme/macros@canary"
    with pytest.raises(InvalidModelId, match="named with @2 and asked for version 3"):
        ModelRef.parse("acme/macros@2", "3")
    with pytest.raises(InvalidModelId, match="neither a version number"):
        ModelRef.parse("acme/macros@0")
    with pytest.raises(InvalidModelId, match="neither a version number"):
        ModelRef.parse("acme/macros", "x y")
    with pytest.raises(InvalidModelId, match="segment must start"):
        ModelRef.parse("../x@2")
