"""The fsspec store: local folders in place, archives and remote copies via the disk cache."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from fsspec.implementations.memory import MemoryFileSystem

from tenantserve.errors import (
    Forbidden,
    InvalidModelId,
    LoadFailed,
    ModelNotFound,
    StoreUnavailable,
)
from tenantserve.store import ModelStore, open_store
from tenantserve.store.disk_cache import DiskCache
from tenantserve.store.fsspec_store import FsspecStore
from tenantserve.types import ModelId

MiB = 1 << 20


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "store",
        {
            "acme/macros/model.onnx": b"macros-v1",
            "acme/macros/model.json": json.dumps({"labels": ["a", "b"]}).encode(),
            "acme/packed.tar.gz": _tar_gz({"packed/model.onnx": b"packed-v1"}),
            "acme/bare.onnx": b"bare",
            "acme/notes/readme.txt": b"not a model",
            "globex/sub/deep/model.json": b"{}",
            "globex/sub/deep/model.onnx": b"deep",
        },
    )


def _local(root: Path, tmp_path: Path, max_bytes: int = MiB) -> ModelStore:
    return open_store(str(root), cache_dir=tmp_path / "cache", max_cache_bytes=max_bytes)


def test_folder_is_served_in_place(store_root: Path, tmp_path: Path) -> None:
    artifact = _local(store_root, tmp_path).fetch(ModelId.parse("acme/macros"))
    assert artifact.path == (store_root / "acme" / "macros").resolve()
    assert artifact.manifest.labels == ("a", "b")
    assert artifact.nbytes == (store_root / "acme/macros/model.onnx").stat().st_size + len(
        (store_root / "acme/macros/model.json").read_bytes()
    )
    assert artifact.download_seconds == 0.0
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_archive_is_unpacked_once_and_again_when_replaced(store_root: Path, tmp_path: Path) -> None:
    store = _local(store_root, tmp_path)
    first = store.fetch(ModelId.parse("acme/packed.tar.gz"))
    assert (first.path / "model.onnx").read_bytes() == b"packed-v1"
    assert first.path.is_relative_to(tmp_path / "cache")
    assert store.fetch(ModelId.parse("acme/packed.tar.gz")).path == first.path
    (store_root / "acme/packed.tar.gz").write_bytes(_tar_gz({"model.onnx": b"packed-v2!"}))
    second = store.fetch(ModelId.parse("acme/packed.tar.gz"))
    assert second.path != first.path
    assert (second.path / "model.onnx").read_bytes() == b"packed-v2!"


def test_archive_id_without_suffix(store_root: Path, tmp_path: Path) -> None:
    _write(store_root, {"acme/plain": _tar_gz({"model.onnx": b"plain"})})
    artifact = _local(store_root, tmp_path).fetch(ModelId.parse("acme/plain"))
    assert (artifact.path / artifact.manifest.model_file).read_bytes() == b"plain"


def test_bare_onnx_file(store_root: Path, tmp_path: Path) -> None:
    artifact = _local(store_root, tmp_path).fetch(ModelId.parse("acme/bare.onnx"))
    assert artifact.manifest.model_file == "bare.onnx"
    assert (artifact.path / "bare.onnx").read_bytes() == b"bare"
    assert artifact.nbytes == 4


@pytest.mark.parametrize("raw", ["acme/missing", "acme", "acme/notes", "acme/bare.onnx/x"])
def test_missing_model_is_not_found(store_root: Path, tmp_path: Path, raw: str) -> None:
    with pytest.raises(ModelNotFound) as info:
        _local(store_root, tmp_path).fetch(ModelId.parse(raw))
    assert str(tmp_path) not in str(info.value)


def test_sha256_is_checked(store_root: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"macros-v1").hexdigest()
    manifest = store_root / "acme/macros/model.json"
    manifest.write_text(json.dumps({"sha256": digest}))
    store = _local(store_root, tmp_path)
    assert store.fetch(ModelId.parse("acme/macros")).manifest.sha256 == digest
    manifest.write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(LoadFailed, match="sha256"):
        store.fetch(ModelId.parse("acme/macros"))


def test_symlink_out_of_the_store_is_refused(store_root: Path, tmp_path: Path) -> None:
    outside = _write(tmp_path / "outside", {"model.onnx": b"other tenant"})
    (store_root / "acme" / "escape").symlink_to(outside)
    with pytest.raises(Forbidden, match="outside the model store") as info:
        _local(store_root, tmp_path).fetch(ModelId.parse("acme/escape"))
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("inside", ["", "packed/"])
def test_a_model_sagemaker_unpacked_is_served_by_its_name(
    store_root: Path, tmp_path: Path, inside: str
) -> None:
    # A multi-model endpoint unpacks model.tar.gz into /opt/ml/models/<name>/model: the tar's
    # files, or its one top-level folder.
    _write(store_root, {f"b4e1/model/{inside}model.onnx": b"sm", f"b4e1/model/{inside}x": b"1"})
    artifact = _local(store_root, tmp_path).fetch(ModelId.parse("b4e1"))
    assert artifact.path == (store_root / "b4e1" / "model" / inside).resolve()
    assert artifact.nbytes == 3


def test_sagemakers_folder_without_a_model_is_refused(store_root: Path, tmp_path: Path) -> None:
    _write(store_root, {"b4e1/model/a/model.onnx": b"a", "b4e1/model/b/model.onnx": b"b"})
    with pytest.raises(LoadFailed, match="one top-level folder"):
        _local(store_root, tmp_path).fetch(ModelId.parse("b4e1"))


def test_sagemakers_folder_may_not_link_out_of_its_tenant(store_root: Path, tmp_path: Path) -> None:
    (store_root / "b4e1").mkdir()
    (store_root / "b4e1" / "model").symlink_to(store_root / "acme" / "macros")
    with pytest.raises(Forbidden):
        _local(store_root, tmp_path).fetch(ModelId.parse("b4e1"))
    _write(store_root, {"c9/model/.keep": b""})
    (store_root / "c9" / "model" / "inner").symlink_to(store_root / "acme" / "macros")
    with pytest.raises(Forbidden):
        _local(store_root, tmp_path).fetch(ModelId.parse("c9"))


def test_a_manifest_linked_to_another_tenants_is_refused(store_root: Path, tmp_path: Path) -> None:
    _write(store_root, {"globex/m/model.json": b'{"labels": ["globex-only"]}'})
    _write(store_root, {"globex/m/model.onnx": b"globex", "acme/linked/model.onnx": b"acme"})
    (store_root / "acme/linked/model.json").symlink_to("../../globex/m/model.json")
    with pytest.raises(Forbidden, match=r"model\.json resolves outside the model's folder") as info:
        _local(store_root, tmp_path).fetch(ModelId.parse("acme/linked"))
    assert str(tmp_path) not in str(info.value)
    assert "globex" not in str(info.value)


_SHARED = {
    "preprocess": {"tokenizer_file": "tokenizer.json"},
    "base": {"model_file": "encoder.onnx", "sha256": "0" * 64},
}


@pytest.mark.parametrize(
    ("linked", "what"),
    [
        ("model.json", "model.json"),
        ("model.onnx", "the model file"),
        ("tokenizer.json", "the tokenizer file"),
        ("encoder.onnx", "the base model file"),
    ],
)
def test_every_file_an_artifact_reads_stays_in_its_own_folder(
    store_root: Path, tmp_path: Path, linked: str, what: str
) -> None:
    # Another model of the same tenant: the tenant check alone would let these through.
    files = {"model.json": json.dumps(_SHARED).encode(), "model.onnx": b"w"}
    files |= {"tokenizer.json": b"{}", "encoder.onnx": b"e"}
    _write(store_root / "acme", {f"donor/{name}": data for name, data in files.items()})
    _write(store_root / "acme", {f"taker/{n}": d for n, d in files.items() if n != linked})
    (store_root / "acme/taker" / linked).symlink_to(f"../donor/{linked}")
    store = _local(store_root, tmp_path)
    assert store.fetch(ModelId.parse("acme/donor")).manifest.base is not None
    with pytest.raises(
        Forbidden, match=re.escape(f"{what} resolves outside the model's folder")
    ) as info:
        store.fetch(ModelId.parse("acme/taker"))
    assert str(tmp_path) not in str(info.value)


def test_malicious_archive_writes_nothing_outside_the_cache(
    store_root: Path, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    _write(store_root, {"acme/evil.tar.gz": buffer.getvalue()})
    with pytest.raises(LoadFailed, match=r"\.\."):
        _local(store_root, tmp_path).fetch(ModelId.parse("acme/evil.tar.gz"))
    assert not list(tmp_path.rglob("escaped.txt"))


def test_archive_larger_than_the_cache_is_refused(store_root: Path, tmp_path: Path) -> None:
    _write(store_root, {"acme/big.tar.gz": _tar_gz({"model.onnx": bytes(4096)})})
    with pytest.raises(LoadFailed, match="more than"):
        _local(store_root, tmp_path, max_bytes=1024).fetch(ModelId.parse("acme/big.tar.gz"))


def test_list(store_root: Path, tmp_path: Path) -> None:
    store = _local(store_root, tmp_path)
    everything = ["acme/bare.onnx", "acme/macros", "acme/packed.tar.gz", "globex/sub/deep"]
    assert store.list() == everything
    assert store.list("acme") == everything[:3]
    assert store.list("acme/") == everything[:3]
    assert store.list("initech") == []
    with pytest.raises(InvalidModelId):
        store.list("../store")


def test_check(store_root: Path, tmp_path: Path) -> None:
    _local(store_root, tmp_path).check()
    open_store(f"file://{store_root}", cache_dir=tmp_path / "c", max_cache_bytes=MiB).check()
    with pytest.raises(StoreUnavailable) as info:
        _local(tmp_path / "absent", tmp_path).check()
    assert str(tmp_path) not in str(info.value)
    with pytest.raises(StoreUnavailable, match="not a folder"):
        _local(store_root / "acme" / "bare.onnx", tmp_path).check()


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="nosuchfs"):
        open_store("nosuchfs://x", cache_dir=tmp_path, max_cache_bytes=MiB)


# Remote-copy behaviour, exercised on fsspec's in-memory filesystem.


@pytest.fixture
def memory_root() -> Iterator[str]:
    # MemoryFileSystem keeps one process-wide store: give each test its own bucket.
    root = f"/bucket-{secrets.token_hex(4)}"
    yield root
    MemoryFileSystem().rm(root, recursive=True)


def test_remote_folder_is_copied_and_refetched_when_changed(
    memory_root: str, tmp_path: Path
) -> None:
    fs = MemoryFileSystem()
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"v1")
    fs.pipe(f"{memory_root}/acme/m/extra/vocab.txt", b"words")
    store = open_store(f"memory:/{memory_root}", cache_dir=tmp_path, max_cache_bytes=MiB)
    first = store.fetch(ModelId.parse("acme/m"))
    assert first.path.is_relative_to(tmp_path)
    assert (first.path / "model.onnx").read_bytes() == b"v1"
    assert (first.path / "extra" / "vocab.txt").read_bytes() == b"words"
    assert store.fetch(ModelId.parse("acme/m")).path == first.path
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"v2-longer")
    second = store.fetch(ModelId.parse("acme/m"))
    assert (second.path / "model.onnx").read_bytes() == b"v2-longer"
    assert store.list() == ["acme/m"]


def test_remote_archive_and_bare_file(memory_root: str, tmp_path: Path) -> None:
    fs = MemoryFileSystem()
    fs.pipe(f"{memory_root}/acme/a.tar.gz", _tar_gz({"a/model.onnx": b"arch"}))
    fs.pipe(f"{memory_root}/acme/b.onnx", b"bare")
    store = open_store(f"memory:/{memory_root}", cache_dir=tmp_path, max_cache_bytes=MiB)
    archive = store.fetch(ModelId.parse("acme/a.tar.gz"))
    assert (archive.path / "model.onnx").read_bytes() == b"arch"
    assert not list(tmp_path.rglob("*.download.tar.gz"))
    bare = store.fetch(ModelId.parse("acme/b.onnx"))
    assert (bare.path / bare.manifest.model_file).read_bytes() == b"bare"
    with pytest.raises(ModelNotFound):
        store.fetch(ModelId.parse("acme/c"))


class _FlakyFS(MemoryFileSystem):  # type: ignore[misc]  # fsspec ships no types
    """Fails the first ``failures`` downloads with ``error`` (or truncates them)."""

    def __init__(self, failures: int, error: Exception | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.error = error
        self.attempts = 0

    def get_file(self, rpath: str, lpath: str, *args: Any, **kwargs: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            if self.error is None:
                Path(lpath).write_bytes(b"tr")  # a short copy
                return
            raise self.error
        super().get_file(rpath, lpath, *args, **kwargs)


def _flaky_store(fs: _FlakyFS, root: str, tmp_path: Path, deadline_s: float) -> FsspecStore:
    cache = DiskCache(tmp_path / "cache", max_bytes=MiB)
    return FsspecStore("memory://flaky", fs, root, disk_cache=cache, retry_deadline_s=deadline_s)


def _client_error(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError("reset by peer"), _client_error(503, "SlowDown"), None],
)
def test_transient_errors_are_retried(
    memory_root: str, tmp_path: Path, error: Exception | None
) -> None:
    fs = _FlakyFS(failures=2, error=error, skip_instance_cache=True)
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"full model bytes")
    artifact = _flaky_store(fs, memory_root, tmp_path, 30).fetch(ModelId.parse("acme/m"))
    assert (artifact.path / "model.onnx").read_bytes() == b"full model bytes"
    assert fs.attempts == 3


def test_retries_stop_at_the_deadline(memory_root: str, tmp_path: Path) -> None:
    fs = _FlakyFS(failures=10**6, error=ConnectionResetError("reset"), skip_instance_cache=True)
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"x")
    with pytest.raises(StoreUnavailable, match="could not be reached"):
        _flaky_store(fs, memory_root, tmp_path, 0.5).fetch(ModelId.parse("acme/m"))
    assert fs.attempts >= 2
    assert not (tmp_path / "cache" / ".tmp").exists() or not any(
        (tmp_path / "cache" / ".tmp").iterdir()
    )


def test_denied_is_not_retried_and_hides_the_secret(memory_root: str, tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-SECRET"
    error = _client_error(403, "SignatureDoesNotMatch")
    error.args = (f"signature with {secret} at /home/op/.aws",)
    fs = _FlakyFS(failures=10**6, error=error, skip_instance_cache=True)
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"x")
    with pytest.raises(StoreUnavailable, match="SignatureDoesNotMatch") as info:
        _flaky_store(fs, memory_root, tmp_path, 30).fetch(ModelId.parse("acme/m"))
    assert fs.attempts == 1
    assert secret not in str(info.value)
    assert "/home" not in str(info.value)


def test_unexpected_bugs_are_not_disguised(memory_root: str, tmp_path: Path) -> None:
    fs = _FlakyFS(failures=1, error=TypeError("a bug"), skip_instance_cache=True)
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"x")
    with pytest.raises(TypeError, match="a bug"):
        _flaky_store(fs, memory_root, tmp_path, 30).fetch(ModelId.parse("acme/m"))


class _ListedFS(MemoryFileSystem):  # type: ignore[misc]  # fsspec ships no types
    """Lists objects with an S3-style ``ETag``; flips a byte in the first ``corrupt`` copies."""

    def __init__(self, etag: str | None, corrupt: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.etag = etag
        self.corrupt = corrupt
        self.copies = 0

    def _listed(self, info: dict[str, Any]) -> dict[str, Any]:
        if info.get("type") == "file":
            data = self.cat_file(info["name"])
            info["ETag"] = self.etag or f'"{hashlib.md5(data).hexdigest()}"'
        return info

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._listed(super().info(path, **kwargs))

    def find(self, path: str, *args: Any, **kwargs: Any) -> Any:
        found = super().find(path, *args, **kwargs)
        if kwargs.get("detail"):
            return {name: self._listed(dict(info)) for name, info in found.items()}
        return found

    def get_file(self, rpath: str, lpath: str, *args: Any, **kwargs: Any) -> None:
        self.copies += 1
        data = self.cat_file(rpath)
        if self.copies <= self.corrupt:
            data = data[:1] + bytes([data[1] ^ 0xFF]) + data[2:]  # same size, other bytes
        Path(lpath).write_bytes(data)


def _listed_store(
    fs: _ListedFS, root: str, tmp_path: Path, *, verify_etag: bool = True
) -> FsspecStore:
    cache = DiskCache(tmp_path / "cache", max_bytes=MiB)
    return FsspecStore(
        "memory://listed", fs, root, disk_cache=cache, retry_deadline_s=0.5,
        verify_etag=verify_etag,
    )  # fmt: skip


def _good_copies(tmp_path: Path) -> list[bytes]:
    cache = tmp_path / "cache"
    return [p.read_bytes() for p in cache.rglob("*.onnx") if ".tmp" not in p.parts]


@pytest.mark.parametrize("model_id", ["acme/m", "acme/bare.onnx", "acme/packed.tar.gz"])
def test_a_copy_that_differs_from_its_etag_is_retried_then_refused(
    memory_root: str, tmp_path: Path, model_id: str
) -> None:
    blobs = {
        "acme/m/model.onnx": b"folder model bytes",
        "acme/bare.onnx": b"bare model bytes",
        "acme/packed.tar.gz": _tar_gz({"model.onnx": b"packed model bytes"}),
    }
    flaky = _ListedFS(etag=None, corrupt=1, skip_instance_cache=True)
    for name, data in blobs.items():
        flaky.pipe(f"{memory_root}/a/{name}", data)
    store = _listed_store(flaky, f"{memory_root}/a", tmp_path / "a")
    artifact = store.fetch(ModelId.parse(model_id))
    assert flaky.copies == 2  # the corrupted copy was dropped and fetched again
    assert (artifact.path / artifact.manifest.model_file).read_bytes().endswith(b"model bytes")

    broken = _ListedFS(etag=None, corrupt=10**6, skip_instance_cache=True)
    for name, data in blobs.items():
        broken.pipe(f"{memory_root}/b/{name}", data)
    store = _listed_store(broken, f"{memory_root}/b", tmp_path / "b")
    with pytest.raises(StoreUnavailable, match="MD5 differs from the ETag") as info:
        store.fetch(ModelId.parse(model_id))
    assert model_id in str(info.value)
    assert str(tmp_path) not in str(info.value)
    assert broken.copies >= 2
    assert _good_copies(tmp_path / "b") == []  # nothing corrupted is left as a copy
    assert list((tmp_path / "b").rglob("*.partial")) == []


@pytest.mark.parametrize(
    ("etag", "verify_etag"),
    [
        ('"0123456789abcdef0123456789abcdef-3"', True),  # multipart: not an MD5, not checked
        ('"kms-or-other-opaque-etag"', True),
        ('"0123456789abcdef0123456789abcdef"', False),  # SSE-KMS bucket: the operator opted out
    ],
)
def test_etags_that_are_not_md5s_are_not_checked(
    memory_root: str, tmp_path: Path, etag: str, verify_etag: bool
) -> None:
    fs = _ListedFS(etag=etag, corrupt=0, skip_instance_cache=True)
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"model bytes")
    store = _listed_store(fs, memory_root, tmp_path, verify_etag=verify_etag)
    artifact = store.fetch(ModelId.parse("acme/m"))
    assert (artifact.path / "model.onnx").read_bytes() == b"model bytes"
    assert fs.copies == 1


def test_gcs_md5_hash_is_checked(memory_root: str, tmp_path: Path) -> None:
    class _GcsFS(_ListedFS):
        def _listed(self, info: dict[str, Any]) -> dict[str, Any]:
            if info.get("type") == "file":
                digest = hashlib.md5(self.cat_file(info["name"])).digest()
                info["md5Hash"] = base64.b64encode(digest).decode()
            return info

    fs = _GcsFS(etag=None, corrupt=1, skip_instance_cache=True)
    fs.pipe(f"{memory_root}/acme/m/model.onnx", b"model bytes")
    artifact = _listed_store(fs, memory_root, tmp_path).fetch(ModelId.parse("acme/m"))
    assert (artifact.path / "model.onnx").read_bytes() == b"model bytes"
    assert fs.copies == 2


def test_an_s3_store_without_an_endpoint_says_which_variable_sets_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    store = open_store("s3://models/fleet", cache_dir=tmp_path, max_cache_bytes=MiB)
    assert isinstance(store, FsspecStore)
    hint = store._endpoint_hint()
    assert "default endpoint" in hint
    assert "set AWS_ENDPOINT_URL" in hint
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert "at http://127.0.0.1:8333" in store._endpoint_hint()
