"""The local store's listing walk gives the ids fsspec's full ``find`` gives, without it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import fsspec

from tenantserve.store import fsspec_store
from tenantserve.store.local_listing import LocalListing

FILES = [
    "acme/macros/model.json",
    "acme/macros/model.onnx",
    "acme/macros/extra/model.json",  # inside a model: not a model of its own
    "acme/macros/extra/inner.onnx",
    "acme/bare.onnx",
    "acme/packed.tar.gz",
    "acme/notes.txt",
    "globex/sub/deep/model.onnx",
    "globex/versioned/1/model.json",
    "globex/versioned/2/model.json",
    ".hidden/m/model.json",  # outside the model-id grammar
    "initech/empty/readme.md",
]


def _listing() -> LocalListing:
    return LocalListing(
        markers=fsspec_store._MODEL_MARKERS,
        suffixes=fsspec_store._LISTED_SUFFIXES,
        is_model_id=fsspec_store._is_model_id,
    )


def _ids(base: Path, prefix: str) -> list[str]:
    """One walk with nothing kept from an earlier one."""
    return _listing().model_ids(str(base), prefix)


def test_walk_lists_what_a_full_find_lists(tmp_path: Path) -> None:
    for rel in FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = fsspec.filesystem("file").find(str(tmp_path))
    reference = fsspec_store._model_ids(name[len(str(tmp_path)) + 1 :] for name in found)

    assert _ids(tmp_path, "") == reference
    assert reference == [
        "acme/bare.onnx",
        "acme/macros",
        "acme/packed.tar.gz",
        "globex/sub/deep",
        "globex/versioned/1",
        "globex/versioned/2",
    ]
    assert _ids(tmp_path / "globex", "globex") == reference[3:]
    assert _ids(tmp_path / "initech", "initech") == []


def _settle(*folders: Path) -> None:
    """Date the folders 10 s back: their scans may be kept (past the settle window)."""
    past = time.time() - 10
    for folder in folders:
        os.utime(folder, (past, past))


def test_a_kept_listing_follows_every_change_of_a_folder(tmp_path: Path) -> None:
    for rel in FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    listing = _listing()
    first = listing.model_ids(str(tmp_path), "")
    assert first == _ids(tmp_path, "")
    (tmp_path / "acme/new").mkdir()
    (tmp_path / "acme/new/model.json").write_text("{}")
    (tmp_path / "globex/versioned/2/model.json").unlink()
    (tmp_path / "acme/bare.onnx").rename(tmp_path / "acme/renamed.onnx")
    assert listing.model_ids(str(tmp_path), "") == _ids(tmp_path, "") == [
        "acme/macros", "acme/new", "acme/packed.tar.gz", "acme/renamed.onnx",
        "globex/sub/deep", "globex/versioned/1",
    ]  # fmt: skip
    assert listing.model_ids(str(tmp_path / "acme"), "acme") == _ids(tmp_path / "acme", "acme")


def test_an_unchanged_folder_is_not_scanned_again_unless_changed_too_recently(
    tmp_path: Path,
) -> None:
    settled, recent = tmp_path / "acme/settled", tmp_path / "acme/recent"
    settled.mkdir(parents=True)
    recent.mkdir(parents=True)
    _settle(settled)
    listing = _listing()
    assert listing.model_ids(str(tmp_path), "") == []
    # A marker appears but each folder's mtime is put back, as a coarse clock would show it.
    for folder in (settled, recent):
        stamp = folder.stat().st_mtime_ns
        (folder / "model.json").write_text("{}")
        os.utime(folder, ns=(stamp, stamp))
    # The settled folder's kept scan is used (one stat, no scan); the recent one, read within
    # the settle window, is scanned again and its model found.
    assert listing.model_ids(str(tmp_path), "") == ["acme/recent"]
    assert _listing().model_ids(str(tmp_path), "") == ["acme/recent", "acme/settled"]
