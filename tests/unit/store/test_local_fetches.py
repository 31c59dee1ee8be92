"""A local store's models are checked in full once, then kept while nothing they depend on
moved: a link put in place of any file or folder, or a changed file, is checked again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
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


def _link_the_manifest_away(root: Path) -> None:
    linked = root / "acme/macros/model.json"
    linked.unlink()
    linked.symlink_to("../../globex/m/model.json")


def _link_the_folder_away(root: Path) -> None:
    folder = root / "acme/macros"
    folder.rename(root / "acme/old")
    folder.symlink_to(root / "globex/m")


def _change_the_model_in_place(root: Path) -> None:
    (root / "acme/macros/model.onnx").write_bytes(b"macros-v2")  # the same size, new content


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (_link_the_manifest_away, Forbidden, r"model\.json resolves outside"),
        (_link_the_folder_away, Forbidden, "outside the model store or its tenant"),
        (_change_the_model_in_place, LoadFailed, "does not match the sha256"),
    ],
)
def test_a_model_changed_after_its_check_is_checked_again(
    root: Path,
    tmp_path: Path,
    settled: list[int],
    change: Callable[[Path], None],
    error: type[Exception],
    message: str,
) -> None:
    store = _store(root, tmp_path)
    store.fetch(MACROS)
    change(root)
    with pytest.raises(error, match=message):
        store.fetch(MACROS)


def test_a_model_changed_a_moment_ago_is_not_kept(root: Path, tmp_path: Path) -> None:
    store = _store(root, tmp_path)
    first = store.fetch(MACROS)
    assert store.fetch(MACROS) is not first  # written just now: checked in full each time
