"""Where artifacts live: ``open_store(url)`` gives a ModelStore for a folder or an fsspec URL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from tenantserve.errors import StoreUnavailable
from tenantserve.store.archive import DEFAULT_MAX_MEMBERS
from tenantserve.store.base import LocalArtifact, ModelStore
from tenantserve.store.disk_cache import DiskCache
from tenantserve.store.fsspec_store import DEFAULT_RETRY_DEADLINE_S, FsspecStore

__all__ = ["DEFAULT_RETRY_DEADLINE_S", "LocalArtifact", "ModelStore", "open_store"]

# Our own retry loop owns the deadline, so botocore gives up quickly instead of stacking its
# retries under ours, and a stalled read fails in seconds rather than minutes.
_S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 30,
        "retries": {"max_attempts": 2, "mode": "standard"},
    },
}


def open_store(
    url: str,
    *,
    cache_dir: Path,
    max_cache_bytes: int,
    retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
    max_archive_members: int = DEFAULT_MAX_MEMBERS,
    storage_options: Mapping[str, Any] | None = None,
) -> ModelStore:
    """A store for ``url``: a local folder (plain path or ``file://``) or any fsspec URL.

    A local store serves folder artifacts in place and unpacks archives into ``cache_dir``;
    any other store (``s3://bucket/prefix``, ``gs://…``) copies artifacts into ``cache_dir``.
    Credentials come from the environment as the filesystem reads them (``AWS_*`` for S3);
    ``storage_options`` are passed to fsspec as they are. Nothing is read or contacted here:
    call ``check()`` to find out whether the store answers.

    Raises:
        StoreUnavailable: fsspec has no filesystem for the URL's scheme.
    """
    cache = DiskCache(cache_dir, max_bytes=max_cache_bytes)
    if "://" not in url or url.startswith("file://"):
        root = Path(url.removeprefix("file://")).expanduser().resolve()
        return FsspecStore(
            url,
            LocalFileSystem(),
            str(root),
            disk_cache=cache,
            local_root=root,
            retry_deadline_s=retry_deadline_s,
            max_archive_members=max_archive_members,
        )
    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = dict(_S3_DEFAULTS) if protocol in ("s3", "s3a") else {}
    # A fresh filesystem per store: fsspec's instance cache would otherwise share one client
    # (and its credentials) between stores, and a listing cache would hide replaced objects.
    options.update(skip_instance_cache=True, use_listings_cache=False)
    options.update(storage_options or {})
    try:
        fs, root_path = fsspec.core.url_to_fs(url, **options)
    except (ValueError, ImportError) as exc:
        raise StoreUnavailable(f"no filesystem for store URLs starting {protocol}://") from exc
    return FsspecStore(
        url,
        fs,
        root_path,
        disk_cache=cache,
        retry_deadline_s=retry_deadline_s,
        max_archive_members=max_archive_members,
    )
