"""A local store's models are checked in full once, then kept while nothing they depend on
moved: a link put in place of any file or folder, or a changed file, is checked again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tenantserve.errors import Forbidden, LoadFailed
from tenantserve.store import ModelStore, local_fetches, manifest, open_store
from tenantserve.types import ModelId, ModelManifest

MACROS = ModelId.parse("acme/macros")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "store" / "acme" / "macros"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"macros-v1")
    digest = hashlib.sha256(b"macros-v1").hexdigest()
    (folder / "model.json").write_text(json.dumps({"sha256": digest, "labels": ["a"]}))
    other = tmp_path / "store" / "globex" / "m"
    other.mkdir(parents=True)
    (other / "model.onnx").write_bytes(b"globex")
    (other / "model.json").write_text(json.dumps({"labels": ["globex-only"]}))
    return (tmp_path / "store").resolve()


def _store(root: Path, tmp_path: Path) -> ModelStore:
    return open_store(str(root), cache_dir=tmp_path / "cache", max_cache_bytes=2**20)


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """No settle time (files here are seconds old at most), and each full read counted."""
    monkeypatch.setattr(local_fetches, "SETTLE_S", 0.0)
    reads: list[int] = []
    read = manifest.read_manifest

    def counted(folder: Path) -> ModelManifest:
        reads.append(1)
        return read(folder)

    monkeypatch.setattr("tenantserve.store.manifest.read_manifest", counted)
    return reads


def test_an_unchanged_model_is_not_checked_again(
    root: Path, tmp_path: Path, settled: list[int]
) -> None:
    store = _store(root, tmp_path)
    first = store.fetch(MACROS)
    assert store.fetch(MACROS) is first
    assert len(settled) == 1


def test_a_manifest_linked_away_after_its_check_is_refused(
    root: Path, tmp_path: Path, settled: list[int]
) -> None:
    store = _store(root, tmp_path)
    store.fetch(MACROS)
    linked = root / "acme/macros/model.json"
    linked.unlink()
    linked.symlink_to("../../globex/m/model.json")
    with pytest.raises(Forbidden, match=r"model\.json resolves outside"):
        store.fetch(MACROS)


def test_a_folder_linked_away_after_its_check_is_refused(
    root: Path, tmp_path: Path, settled: list[int]
) -> None:
    store = _store(root, tmp_path)
    store.fetch(MACROS)
    folder = root / "acme/macros"
    folder.rename(root / "acme/old")
    folder.symlink_to(root / "globex/m")
    with pytest.raises(Forbidden, match="outside the model store or its tenant"):
        store.fetch(MACROS)


def test_a_model_file_changed_in_place_is_verified_again(
    root: Path, tmp_path: Path, settled: list[int]
) -> None:
    store = _store(root, tmp_path)
    store.fetch(MACROS)
    (root / "acme/macros/model.onnx").write_bytes(b"macros-v2")  # the same size, new content
    with pytest.raises(LoadFailed, match="does not match the sha256"):
        store.fetch(MACROS)


def test_a_model_changed_a_moment_ago_is_not_kept(root: Path, tmp_path: Path) -> None:
    store = _store(root, tmp_path)
    first = store.fetch(MACROS)
    assert store.fetch(MACROS) is not first  # written just now: checked in full each time
