"""The local store's listing walk gives the ids fsspec's full ``find`` gives, without it."""

from __future__ import annotations

from pathlib import Path

import fsspec

from tenantserve.store import fsspec_store
from tenantserve.store.local_listing import local_model_ids

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


def _ids(base: Path, prefix: str) -> list[str]:
    return local_model_ids(
        str(base),
        prefix,
        markers=fsspec_store._MODEL_MARKERS,
        suffixes=fsspec_store._LISTED_SUFFIXES,
        is_model_id=fsspec_store._is_model_id,
    )


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
