"""Publishing artifacts: whole folders locally, staged uploads with the manifest last remotely."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from tenantserve.tools.fleet.publish import FsspecPublisher, LocalPublisher, open_publisher


def _artifact(folder: Path, version: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text(f"model {version}")
    (folder / "tokenizer.json").write_text(f"tokenizer {version}")
    (folder / "model.json").write_text(f"manifest {version}")
    return folder


def _memory_publisher() -> tuple[FsspecPublisher, MemoryFileSystem, str]:
    # A root of its own: the memory filesystem is one store shared by the whole process.
    root = f"/publish-{secrets.token_hex(4)}"
    assert isinstance(open_publisher(f"memory://{root}"), FsspecPublisher)
    fs = MemoryFileSystem(skip_instance_cache=True)
    return FsspecPublisher(f"memory://{root}", fs, root), fs, root


def test_local_publish_replaces_the_folder_and_leaves_no_temporaries(tmp_path: Path) -> None:
    publisher = open_publisher(str(tmp_path / "store"))
    assert isinstance(publisher, LocalPublisher)

    publisher.publish(_artifact(tmp_path / "v1", "1"), "acme/macros")
    publisher.publish(_artifact(tmp_path / "v2", "2"), "acme/macros")

    dest = tmp_path / "store" / "acme"
    assert [p.name for p in dest.iterdir()] == ["macros"]
    assert (dest / "macros" / "model.json").read_text() == "manifest 2"
    assert sorted(p.name for p in (dest / "macros").iterdir()) == [
        "model.json",
        "model.onnx",
        "tokenizer.json",
    ]


def test_file_url_is_a_local_folder(tmp_path: Path) -> None:
    publisher = open_publisher(f"file://{tmp_path}")
    publisher.publish(_artifact(tmp_path / "a", "1"), "t/m")

    assert (tmp_path / "t" / "m" / "model.onnx").read_text() == "model 1"


def test_remote_publish_copies_manifest_last_and_removes_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, fs, root = _memory_publisher()
    copies: list[tuple[str, str]] = []
    original = fs.copy

    def spy(src: str, dst: str, **kwargs: Any) -> None:
        copies.append((src, dst))
        original(src, dst, **kwargs)

    monkeypatch.setattr(fs, "copy", spy)
    publisher.publish(_artifact(tmp_path / "v1", "1"), "acme/macros")

    assert [dst.rsplit("/", 1)[1] for _, dst in copies] == [
        "model.onnx",
        "tokenizer.json",
        "model.json",
    ]
    assert all("/.macros." in src and src.split("/")[-2].endswith(".tmp") for src, _ in copies)
    assert sorted(fs.find(root)) == [
        f"{root}/acme/macros/{name}" for name in ("model.json", "model.onnx", "tokenizer.json")
    ]
    assert fs.cat(f"{root}/acme/macros/model.json") == b"manifest 1"


def test_failed_upload_leaves_neither_artifact_nor_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, fs, root = _memory_publisher()
    original = fs.put_file
    calls = []

    def flaky(local: str, remote: str, **kwargs: Any) -> None:
        calls.append(remote)
        if len(calls) == 2:
            raise OSError("connection reset")
        original(local, remote, **kwargs)

    monkeypatch.setattr(fs, "put_file", flaky)
    with pytest.raises(OSError, match="connection reset"):
        publisher.publish(_artifact(tmp_path / "v1", "1"), "acme/macros")

    assert fs.find(root) == []
