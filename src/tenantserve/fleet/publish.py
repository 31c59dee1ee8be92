"""Publish locally built artifact folders into a store so no reader ever sees half of one."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Protocol

MANIFEST_NAME = "model.json"


class Publisher(Protocol):
    """Puts a finished artifact folder into a store under a model id."""

    @property
    def url(self) -> str: ...

    def publish(self, folder: Path, model_id: str) -> None:
        """Make ``folder``'s files the artifact ``model_id``; replace an older one."""
        ...


def open_publisher(url: str) -> Publisher:
    """A publisher for a local folder (plain path or ``file://``) or any fsspec URL.

    Credentials come from the environment as the filesystem reads them (``AWS_*`` for S3).
    """
    if "://" not in url or url.startswith("file://"):
        return LocalPublisher(url, Path(url.removeprefix("file://")).expanduser())
    import fsspec

    # A fresh filesystem: fsspec's instance cache would share a client (and its credentials)
    # with other users in this process, and a listing cache would hide our own writes.
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, use_listings_cache=False)
    return FsspecPublisher(url, fs, root)


class LocalPublisher:
    """Copies into a hidden folder beside the destination, then renames it into place."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self._root = root

    def publish(self, folder: Path, model_id: str) -> None:
        """Copy, fsync, rename: a crash leaves either the old artifact or the new one."""
        dest = self._root / model_id
        dest.parent.mkdir(parents=True, exist_ok=True)
        # A leading dot keeps temporary names outside the model-id grammar: no store lists them.
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            shutil.copytree(folder, tmp)
            os.chmod(tmp, 0o755)
            for path in tmp.rglob("*"):
                if path.is_file():
                    with open(path, "rb") as handle:
                        os.fsync(handle.fileno())
            swap_into_place(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def swap_into_place(tmp: Path, dest: Path) -> None:
    """Make the finished folder ``tmp`` appear as ``dest`` by renames: a reader sees the old
    artifact or the new one, never half of either."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.old")
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)


class FsspecPublisher:
    """Uploads under a hidden staging prefix, then copies to the final keys, manifest last.

    Object stores have no folder rename, but each object write is atomic: the upload (the slow,
    failure-prone part) goes to ``.<name>.<random>.tmp/``; only when every file is there are
    they copied server-side to ``<model_id>/``, ``model.json`` last, so a reader that finds the
    manifest finds the model file it describes. While an older artifact is replaced, a reader
    may see the new model file beside the old manifest, whose sha256 refuses the load until the
    new manifest lands a moment later.
    """

    def __init__(self, url: str, fs: Any, root: str) -> None:
        self.url = url
        self._fs = fs
        self._root = root.rstrip("/")

    def publish(self, folder: Path, model_id: str) -> None:
        """Upload ``folder`` to staging, copy it to ``model_id``, remove the staging prefix."""
        dest = f"{self._root}/{model_id}"
        parent, name = dest.rsplit("/", 1)
        staging = f"{parent}/.{name}.{secrets.token_hex(4)}.tmp"
        files = sorted(
            (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
            key=lambda rel: (rel == MANIFEST_NAME, rel),
        )
        try:
            for rel in files:
                self._fs.put_file(str(folder / rel), f"{staging}/{rel}")
            for rel in files:
                self._fs.copy(f"{staging}/{rel}", f"{dest}/{rel}")
        finally:
            with contextlib.suppress(FileNotFoundError, OSError):
                self._fs.rm(staging, recursive=True)
