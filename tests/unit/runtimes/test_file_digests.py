"""FileDigests: hashed once per file identity, again when the file changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tenantserve.runtimes.file_digests import FileDigests


def test_an_unchanged_file_is_hashed_once_and_a_rewritten_one_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"first")
    hashed: list[int] = []
    real = hashlib.file_digest

    def counting(file: object, name: str) -> object:
        hashed.append(1)
        return real(file, name)  # type: ignore[arg-type]

    monkeypatch.setattr(hashlib, "file_digest", counting)
    digests = FileDigests()
    assert digests.of(path) == digests.of(path) == hashlib.sha256(b"first").hexdigest()
    assert len(hashed) == 1
    path.write_bytes(b"second!")  # another size, another mtime: another identity
    os.utime(path, ns=(1, 1))
    assert digests.of(path) == hashlib.sha256(b"second!").hexdigest()
    assert len(hashed) == 2
    with pytest.raises(FileNotFoundError):
        digests.of(tmp_path / "missing")
