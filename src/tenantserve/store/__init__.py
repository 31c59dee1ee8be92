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

__all__ = [
    "DEFAULT_READ_TIMEOUT_S",
    "DEFAULT_RETRY_DEADLINE_S",
    "DiskCache",
    "LocalArtifact",
    "ModelStore",
    "open_store",
]

DEFAULT_READ_TIMEOUT_S = 10.0
# s3fs retries some errors itself (SlowDown five times, a broken body read by resuming with a
# ranged GET) and botocore retries under it: one quick retry each, so that a fault reaches our
# own retry loop, which owns the backoff and the deadline, in seconds and with its real cause.
_S3_ATTEMPTS = 2
# A connection to S3 takes milliseconds; one that takes seconds is not coming.
_MAX_CONNECT_TIMEOUT_S = 2.0


def open_store(
    url: str,
    *,
    cache_dir: Path,
    max_cache_bytes: int,
    retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    verify_etag: bool = True,
    max_archive_members: int = DEFAULT_MAX_MEMBERS,
    storage_options: Mapping[str, Any] | None = None,
    disk_cache: DiskCache | None = None,
) -> ModelStore:
    """A store for ``url``: a local folder (plain path or ``file://``) or any fsspec URL.

    A local store serves folder artifacts in place and unpacks archives into ``cache_dir``;
    any other store (``s3://bucket/prefix``, ``gs://…``) copies artifacts into ``cache_dir``.
    Credentials come from the environment as the filesystem reads them (``AWS_*`` for S3);
    ``storage_options`` are passed to fsspec as they are. Nothing is read or contacted here:
    call ``check()`` to find out whether the store answers. ``disk_cache``, when given, is the
    bounded folder to use (shared with the runtimes' fast-load files); otherwise one is made
    at ``cache_dir`` bounded by ``max_cache_bytes``.

    Transient errors (5xx, ``SlowDown``, resets, timeouts, a copy that fails its check) are
    retried with backoff; no new attempt starts after ``retry_deadline_s``. A stalled S3 read
    is cut after ``read_timeout_s`` without a byte; a slow download that keeps moving is not.
    With ``verify_etag``, a copied object whose ETag has an MD5's form (a single-part upload)
    must hash to it; turn it off for buckets under SSE-KMS or SSE-C, whose ETags are not MD5s.

    Raises:
        StoreUnavailable: fsspec has no filesystem for the URL's scheme.
    """
    cache = DiskCache(cache_dir, max_bytes=max_cache_bytes) if disk_cache is None else disk_cache
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
    s3 = protocol in ("s3", "s3a")
    options: dict[str, Any] = {}
    if s3:
        options["config_kwargs"] = {
            "connect_timeout": min(read_timeout_s, _MAX_CONNECT_TIMEOUT_S),
            "read_timeout": read_timeout_s,
            "retries": {"max_attempts": _S3_ATTEMPTS, "mode": "standard"},
        }
    # A fresh filesystem per store: fsspec's instance cache would otherwise share one client
    # (and its credentials) between stores, and a listing cache would hide replaced objects.
    options.update(skip_instance_cache=True, use_listings_cache=False)
    options.update(storage_options or {})
    try:
        fs, root_path = fsspec.core.url_to_fs(url, **options)
    except (ValueError, ImportError) as exc:
        raise StoreUnavailable(f"no filesystem for store URLs starting {protocol}://") from exc
    if s3:
        # A class attribute s3fs reads on every call; its maintainers point to it for tuning.
        fs.retries = _S3_ATTEMPTS
    return FsspecStore(
        url,
        fs,
        root_path,
        disk_cache=cache,
        retry_deadline_s=retry_deadline_s,
        verify_etag=verify_etag,
        max_archive_members=max_archive_members,
    )
