"""The ModelStore over fsspec: local folders served in place, the rest via the disk cache."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import posixpath
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from fsspec import AbstractFileSystem

from tenantserve.convert.registry import NATIVE_FILES
from tenantserve.errors import (
    Forbidden,
    InvalidModelId,
    LoadFailed,
    ModelNotFound,
    StoreUnavailable,
    StoreUnreachable,
    TenantServeError,
)
from tenantserve.store.archive import DEFAULT_MAX_MEMBERS, extract_archive, find_artifact_dir
from tenantserve.store.base import LocalArtifact
from tenantserve.store.disk_cache import DiskCache, tree_bytes
from tenantserve.store.local_fetches import LocalFetches
from tenantserve.store.local_listing import LocalListing
from tenantserve.store.manifest import (
    DEFAULT_MODEL_FILE,
    MANIFEST_NAME,
    VerifiedFiles,
    checked_manifest,
    read_manifest,
)
from tenantserve.store.translate import IncompleteDownload, translate
from tenantserve.store.versions import ModelVersions, read_versions
from tenantserve.types import ModelId, ModelManifest

T = TypeVar("T")
Info = Mapping[str, Any]

DEFAULT_RETRY_DEADLINE_S = 60.0
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
BARE_MODEL_SUFFIX = ".onnx"
_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0
# A store that takes no connection at all is down or misconfigured, not slow: retry it this
# long, not for the whole retry deadline, so a cold call hears why within seconds.
UNREACHABLE_RETRY_S = 2.0
_ARCHIVE_DIR = "artifact"
_VERSION_FIELDS = ("ETag", "etag", "mtime", "LastModified", "created", "md5")
_MODEL_MARKERS = (MANIFEST_NAME, DEFAULT_MODEL_FILE)
_SAGEMAKER_DIR = "model"  # where SageMaker unpacks a model.tar.gz under the model's folder
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_LISTED_SUFFIXES = (*ARCHIVE_SUFFIXES, BARE_MODEL_SUFFIX)


class FsspecStore:
    """Model artifacts under ``root`` of an fsspec filesystem.

    With ``local_root`` set (a local folder store), folder and bare-file artifacts are served
    in place and only archives are unpacked into ``disk_cache``. Otherwise every artifact is
    copied into ``disk_cache``, keyed by its id and its size and ETag (or mtime), so a
    replaced object is fetched again. Transient store errors are retried with exponential
    backoff until ``retry_deadline_s`` has passed since the call began.

    A copy is written under a temporary name and kept only once its size matches the store's
    listing and, with ``verify_etag``, its MD5 matches an MD5-form ETag (or GCS ``md5Hash``):
    a reset, a resumed ranged read or a corrupted body is retried, never kept.
    """

    def __init__(
        self,
        url: str,
        fs: AbstractFileSystem,
        root: str,
        *,
        disk_cache: DiskCache,
        local_root: Path | None = None,
        retry_deadline_s: float = DEFAULT_RETRY_DEADLINE_S,
        verify_etag: bool = True,
        max_archive_members: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        self.url = url
        self._fs = fs
        self._root = root.rstrip("/")
        self._cache = disk_cache
        self._local_root = local_root
        self._retry_deadline_s = retry_deadline_s
        self._verify_etag = verify_etag
        self._max_archive_members = max_archive_members
        self._verified = VerifiedFiles()
        self._fetches = LocalFetches(local_root) if local_root is not None else None
        self._listing = LocalListing(
            markers=_MODEL_MARKERS, suffixes=_LISTED_SUFFIXES, is_model_id=_is_model_id
        )

    def fetch(self, model_id: ModelId) -> LocalArtifact:
        """Make ``model_id`` available on local disk (see :class:`ModelStore`)."""
        deadline = time.monotonic() + self._retry_deadline_s
        if self._local_root is not None:
            # Local reads can raise a plain OSError anywhere: translate them all here.
            return self._call(lambda: self._resolve(model_id, deadline), deadline, model_id)
        return self._resolve(model_id, deadline)

    def _resolve(self, model_id: ModelId, deadline: float) -> LocalArtifact:
        kept = self._fetches.get(model_id) if self._fetches is not None else None
        if kept is not None:
            return kept  # served in place and unchanged since its last full check
        rpath = f"{self._root}/{model_id}"
        info = self._call(lambda: self._fs.info(rpath), deadline, model_id)
        if info.get("type") == "directory":
            return self._fetch_folder(model_id, rpath, deadline)
        if model_id.value.endswith(BARE_MODEL_SUFFIX):
            return self._fetch_bare(model_id, rpath, info, deadline)
        return self._fetch_archive(model_id, rpath, info, deadline)

    def versions(self, model_id: ModelId) -> ModelVersions | None:
        """The numbered versions and aliases of a versioned model folder; ``None`` for a
        model that is not versioned or not there (its fetch says which)."""
        deadline = time.monotonic() + self._retry_deadline_s
        rpath = f"{self._root}/{model_id}"
        if self._local_root is not None:
            # As a fetch: the folder (and the aliases read from it) stays in its tenant.
            rpath = str(self._call(lambda: self._inside_root(model_id.value), deadline, model_id))
        try:
            return self._call(
                lambda: read_versions(self._fs, rpath, model_id, _MODEL_MARKERS),
                deadline,
                model_id,
            )
        except ModelNotFound:
            return None

    def list(self, prefix: str = "") -> list[str]:
        """Model ids under ``prefix`` (a tenant, a deeper path, or ``""``), sorted."""
        prefix = prefix.strip("/")
        if prefix:
            ModelId.parse(prefix)  # refuse traversal before touching the store
        base = f"{self._root}/{prefix}" if prefix else self._root
        deadline = time.monotonic() + self._retry_deadline_s
        try:
            if self._local_root is not None:
                # A walk that stops at model folders (local_listing): ~4x faster than find.
                return self._call(lambda: _list_local(self._listing, base, prefix), deadline, None)
            names: Iterable[str] = self._call(lambda: self._fs.find(base), deadline, None)
        except ModelNotFound:
            return []
        rels = [name[len(self._root) + 1 :] for name in names if name.startswith(self._root + "/")]
        return _model_ids(rels)

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store root can be reached and read.

        Its ``operator_hint`` names what to fix (see :class:`ModelStore`).
        """
        deadline = time.monotonic() + self._retry_deadline_s
        try:
            info = self._call(lambda: self._fs.info(self._root), deadline, None)
        except ModelNotFound as exc:
            raise StoreUnavailable(
                "the model store root does not exist", operator_hint=self._missing_root()
            ) from exc
        except StoreUnreachable as exc:
            raise StoreUnreachable(str(exc), operator_hint=self._endpoint_hint()) from exc
        except StoreUnavailable as exc:
            raise StoreUnavailable(str(exc), operator_hint=f"store {self.url}") from exc
        if info.get("type") != "directory":
            raise StoreUnavailable(
                "the model store root is not a folder",
                operator_hint=f"{self.url} is a file; --store names a folder of model artifacts",
            )

    def _missing_root(self) -> str:
        if self._local_root is not None:
            return f"no folder {self._local_root}; --store names a folder of model artifacts"
        return (
            f"no bucket, or nothing under the prefix, at {self.url}; check "
            "--store. A new store needs an object under its prefix: `tenantserve fleet build "
            "--store s3://…` publishes one"
        )

    def _endpoint_hint(self) -> str:
        if self._local_root is not None:
            return str(self._local_root)
        endpoint = _endpoint_of(self._fs)
        if endpoint is None:
            return (
                f"tried {self.url} at the provider's default endpoint; for a local or other "
                "S3-compatible server set AWS_ENDPOINT_URL (e.g. http://127.0.0.1:8333)"
            )
        return f"tried {self.url} at {endpoint}; is the server running? (AWS_ENDPOINT_URL sets it)"

    def _fetch_folder(self, model_id: ModelId, rpath: str, deadline: float) -> LocalArtifact:
        if self._local_root is not None:
            folder = self._local_folder(model_id)
            # Every file it reads stays in its own (resolved) folder: no link to another model.
            manifest = checked_manifest(
                folder, f"model {model_id}", root=folder, verified=self._verified, resolved=True
            )
            artifact = LocalArtifact(model_id, folder, manifest, tree_bytes(folder))
            if self._fetches is not None:
                self._fetches.put(artifact)
            return artifact
        listing: Mapping[str, Info] = self._call(
            lambda: self._fs.find(rpath, detail=True), deadline, model_id
        )
        files = {_relative(name, rpath): info for name, info in listing.items()}
        if not {MANIFEST_NAME, DEFAULT_MODEL_FILE, *NATIVE_FILES} & files.keys():
            raise ModelNotFound(f"model {model_id} not found in the store (no model file)")
        self._check_fits(model_id, sum(int(info.get("size") or 0) for info in files.values()))
        version = sorted((rel, info.get("size"), _version(info)) for rel, info in files.items())
        timer = _Timer()

        def build(work: Path) -> None:
            with timer:
                for rel, info in files.items():
                    target = work.joinpath(*rel.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._download(f"{rpath}/{rel}", target, info, deadline, model_id)
            checked_manifest(work, f"model {model_id}")

        entry, _built = self._cache.get_or_create(self._key("folder", model_id, version), build)
        manifest = read_manifest(entry.path)
        return LocalArtifact(model_id, entry.path, manifest, entry.nbytes, timer.seconds)

    def _fetch_bare(
        self, model_id: ModelId, rpath: str, info: Info, deadline: float
    ) -> LocalArtifact:
        name = posixpath.basename(model_id.value)
        manifest = ModelManifest(model_file=name)
        if self._local_root is not None:
            path = self._inside_root(model_id.value)
            return LocalArtifact(model_id, path.parent, manifest, path.stat().st_size)
        self._check_fits(model_id, int(info.get("size") or 0))
        timer = _Timer()

        def build(work: Path) -> None:
            with timer:
                self._download(rpath, work / name, info, deadline, model_id)

        version = (info.get("size"), _version(info))
        entry, _built = self._cache.get_or_create(self._key("bare", model_id, version), build)
        return LocalArtifact(model_id, entry.path, manifest, entry.nbytes, timer.seconds)

    def _fetch_archive(
        self, model_id: ModelId, rpath: str, info: Info, deadline: float
    ) -> LocalArtifact:
        self._check_fits(model_id, int(info.get("size") or 0))
        timer = _Timer()

        def build(work: Path) -> None:
            if self._local_root is not None:
                source = self._inside_root(model_id.value)
            else:
                source = work / ".download.tar.gz"
                with timer:
                    self._download(rpath, source, info, deadline, model_id)
            extract_archive(
                source,
                work / _ARCHIVE_DIR,
                max_bytes=self._cache.max_bytes,
                max_members=self._max_archive_members,
            )
            if source.is_relative_to(work):
                source.unlink()
            checked_manifest(find_artifact_dir(work / _ARCHIVE_DIR), f"model {model_id}")

        version = (info.get("size"), _version(info))
        entry, _built = self._cache.get_or_create(self._key("archive", model_id, version), build)
        folder = find_artifact_dir(entry.path / _ARCHIVE_DIR)
        manifest = read_manifest(folder)
        return LocalArtifact(model_id, folder, manifest, entry.nbytes, timer.seconds)

    def _download(
        self, rpath: str, target: Path, info: Info, deadline: float, model_id: ModelId
    ) -> None:
        size = info.get("size")
        md5 = _listed_md5(info) if self._verify_etag else None
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")

        def copy() -> None:
            try:
                self._fs.get_file(rpath, str(partial))
                _check_copy(partial, None if size is None else int(size), md5)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)

        self._call(copy, deadline, model_id)

    def _call(self, op: Callable[[], T], deadline: float, model_id: ModelId | None) -> T:
        delay = _FIRST_BACKOFF_S
        unreachable_deadline = min(deadline, time.monotonic() + UNREACHABLE_RETRY_S)
        while True:
            try:
                return op()
            except TenantServeError:
                raise
            except Exception as exc:
                subject = f"model {model_id}" if model_id is not None else ""
                error, transient = translate(exc, subject, remote=self._local_root is None)
                if error is None:
                    raise
                give_up_at = (
                    unreachable_deadline if isinstance(error, StoreUnreachable) else deadline
                )
                if not transient or time.monotonic() + delay > give_up_at:
                    raise error from exc
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)

    def _local_folder(self, model_id: ModelId) -> Path:
        """A local folder artifact: ``<root>/<id>``, or, when that holds no model file, what
        SageMaker unpacked into ``<root>/<id>/model`` (a multi-model endpoint unpacks model N
        into ``/opt/ml/models/N/model``): that folder or its one top-level folder."""
        folder = self._inside_root(model_id.value)
        unpacked = folder / _SAGEMAKER_DIR
        if any((folder / marker).is_file() for marker in _MODEL_MARKERS) or not unpacked.is_dir():
            return folder
        found = find_artifact_dir(self._inside_root(f"{model_id}/{_SAGEMAKER_DIR}"))
        assert self._local_root is not None
        # Resolved again: the one top-level folder may be a link, kept inside the tenant too.
        return self._inside_root(found.relative_to(self._local_root).as_posix())

    def _inside_root(self, relative: str) -> Path:
        # Defence in depth: ids are validated, but a symlink in the store could still point out
        # of it, or into another tenant's folder (RELIABILITY 9): stay under the id's tenant.
        assert self._local_root is not None
        path = (self._local_root / relative).resolve()
        if not path.is_relative_to(self._local_root / relative.split("/", 1)[0]):
            raise Forbidden(
                "the artifact resolves to a location outside the model store or its tenant"
            )
        return path

    def _check_fits(self, model_id: ModelId, nbytes: int) -> None:
        if nbytes > self._cache.max_bytes:
            raise LoadFailed(
                f"model {model_id} takes {nbytes} bytes, more than the disk cache's "
                f"{self._cache.max_bytes}"
            )

    def _key(self, kind: str, model_id: ModelId, version: object) -> str:
        material = "\0".join((self.url, kind, model_id.value, repr(version)))
        return hashlib.sha256(material.encode()).hexdigest()[:40]


class _Timer:
    """Adds up the seconds spent inside ``with timer:`` blocks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()

    def __exit__(self, *exc_info: object) -> None:
        self.seconds += time.monotonic() - self._started


def _endpoint_of(fs: AbstractFileSystem) -> str | None:
    """The endpoint an S3 filesystem calls: its options, else botocore's variables."""
    explicit = getattr(fs, "endpoint_url", None) or (getattr(fs, "client_kwargs", {}) or {}).get(
        "endpoint_url"
    )
    found = explicit or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return str(found) if found else None


def _relative(name: str, rpath: str) -> str:
    # Listed names become local paths: refuse any that could climb out of the copy's folder.
    rel = name[len(rpath) + 1 :] if name.startswith(rpath + "/") else ""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise LoadFailed("the model store listed a file with an unsafe name")
    return rel


def _listed_md5(info: Info) -> str | None:
    """The object's MD5 as the store listed it, when it did: S3 ETag, GCS ``md5Hash``."""
    etag = str(info.get("ETag") or "").strip('"').lower()
    if _MD5_HEX.fullmatch(etag):  # a multipart ETag ends in "-<parts>": not an MD5
        return etag
    encoded = info.get("md5Hash")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True).hex()
        except (binascii.Error, ValueError):
            return None
    return None


def _check_copy(path: Path, size: int | None, md5: str | None) -> None:
    # A short or long copy (a reset connection, a proxy's bad ranged GET) or a body whose bytes
    # changed on the way is retried, never kept.
    if size is not None and path.stat().st_size != size:
        raise IncompleteDownload("size differs from the listing")
    if md5 is None:
        return
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, lambda: hashlib.md5(usedforsecurity=False))
    if digest.hexdigest() != md5:
        # SSE-KMS and SSE-C objects carry ETags that are not their MD5: say how to opt out.
        raise IncompleteDownload(
            "MD5 differs from the ETag; for SSE-KMS or SSE-C objects use --no-store-verify-etag"
        )


def _version(info: Info) -> str:
    return next((str(info[f]) for f in _VERSION_FIELDS if info.get(f) is not None), "")


def _list_local(listing: LocalListing, base: str, prefix: str) -> list[str]:
    return listing.model_ids(base, prefix) if os.path.isdir(base) else []


def _model_ids(rels: Iterable[str]) -> list[str]:
    rels = list(rels)
    folders = {posixpath.dirname(r) for r in rels if posixpath.basename(r) in _MODEL_MARKERS}
    folders.discard("")

    def under_model(path: str) -> bool:
        parent = posixpath.dirname(path)
        while parent:
            if parent in folders:
                return True
            parent = posixpath.dirname(parent)
        return False

    ids = {folder for folder in folders if not under_model(folder)}
    ids.update(r for r in rels if r.endswith(_LISTED_SUFFIXES) and not under_model(r))
    return sorted(model_id for model_id in ids if _is_model_id(model_id))


def _is_model_id(raw: str) -> bool:
    try:
        ModelId.parse(raw)
    except InvalidModelId:
        return False
    return True
