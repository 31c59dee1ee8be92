"""Publish locally built artifact folders into a store so no reader ever sees half of one."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Protocol

MANIFEST_NAME = "model.json"


class MissingBucket(ValueError):
    """The store's S3 bucket does not exist, and it was not to be created."""

    def __init__(self, bucket: str, endpoint: str | None) -> None:
        self.bucket = bucket
        where = f" at {endpoint}" if endpoint else ""
        super().__init__(f"bucket {bucket!r} does not exist{where}")


class Publisher(Protocol):
    """Puts a finished artifact folder into a store under a model id."""

    @property
    def url(self) -> str: ...

    @property
    def created_bucket(self) -> str | None:
        """The bucket that opening the store created, if it did."""
        ...

    def publish(self, folder: Path, model_id: str) -> None:
        """Make ``folder``'s files the artifact ``model_id``; replace an older one."""
        ...


def open_publisher(url: str, *, create_bucket: bool = False) -> Publisher:
    """A publisher for a local folder (plain path or ``file://``) or any fsspec URL.

    Credentials come from the environment as the filesystem reads them (``AWS_*`` for S3).
    An ``s3://`` store's bucket must exist, or be created with ``create_bucket``: some servers
    (SeaweedFS, for admin keys) would otherwise create it silently on the first upload, and a
    mistyped name would become a new bucket.

    Raises:
        MissingBucket: the bucket does not exist and ``create_bucket`` is false.
        OSError: the bucket could not be checked or created (endpoint, keys, permissions).
    """
    if "://" not in url or url.startswith("file://"):
        return LocalPublisher(url, Path(url.removeprefix("file://")).expanduser())
    import fsspec

    # A fresh filesystem: fsspec's instance cache would share a client (and its credentials)
    # with other users in this process, and a listing cache would hide our own writes.
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, use_listings_cache=False)
    publisher = FsspecPublisher(url, fs, root)
    if "s3" in fs.protocol:
        publisher.created_bucket = _ensure_bucket(fs, root.split("/", 1)[0], create=create_bucket)
    return publisher


def _ensure_bucket(fs: Any, bucket: str, *, create: bool) -> str | None:
    """Check that ``bucket`` exists; create it when told to. Returns the name if created."""
    from botocore.exceptions import BotoCoreError

    try:
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
            return None
        except FileNotFoundError:
            if not create:
                raise MissingBucket(bucket, fs.s3.meta.endpoint_url) from None
        params: dict[str, Any] = {"Bucket": bucket}
        region = fs.s3.meta.region_name
        if region and region != "us-east-1":  # AWS refuses us-east-1 as a location constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        fs.call_s3("create_bucket", **params)
    except BotoCoreError as exc:  # no endpoint, no credentials: not an OSError in botocore
        raise OSError(f"cannot check bucket {bucket!r}: {exc}") from exc
    fs.invalidate_cache()
    return bucket


class LocalPublisher:
    """Copies into a hidden folder beside the destination, then renames it into place.

    Files are hard-linked rather than copied where the store shares the folder's filesystem:
    a fleet's tenants all carry the same 23 MB encoder, and a thousand copies of it would fill
    the disk. A published folder is the builder's own, discarded after, so nothing else writes
    through the shared inode.
    """

    created_bucket: str | None = None

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
            shutil.copytree(folder, tmp, copy_function=_link_or_copy)
            os.chmod(tmp, 0o755)
            for path in tmp.rglob("*"):
                if path.is_file():
                    with open(path, "rb") as handle:
                        os.fsync(handle.fileno())
            swap_into_place(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


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
        self.created_bucket: str | None = None
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
