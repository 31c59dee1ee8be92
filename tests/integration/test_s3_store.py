"""The fsspec store against a real S3 API (SeaweedFS on loopback), credentials from the env."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures.s3 import S3Server
from tenantserve.errors import ModelNotFound, StoreUnavailable, StoreUnreachable
from tenantserve.store import ModelStore, open_store
from tenantserve.types import ModelId

pytestmark = pytest.mark.s3

MiB = 1 << 20


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _store(bucket: str, tmp_path: Path, retry_deadline_s: float = 20) -> ModelStore:
    return open_store(
        f"s3://{bucket}/models",
        cache_dir=tmp_path / "cache",
        max_cache_bytes=16 * MiB,
        retry_deadline_s=retry_deadline_s,
    )


@pytest.fixture
def bucket(s3_env: S3Server, tmp_path: Path) -> str:
    name = s3_env.create_bucket()
    weights = bytes(range(256)) * 64
    tree = tmp_path / "upload"
    files = {
        "acme/macros/model.onnx": weights,
        "acme/macros/model.json": json.dumps(
            {"labels": ["x", "y"], "sha256": hashlib.sha256(weights).hexdigest()}
        ).encode(),
        "acme/packed.tar.gz": _tar_gz({"packed/model.onnx": b"packed-v1"}),
        "globex/solo.onnx": b"bare model",
    }
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    s3_env.upload_tree(tree, name, "models")
    return name


def test_folder_and_archive_artifacts(bucket: str, tmp_path: Path) -> None:
    store = _store(bucket, tmp_path)
    store.check()
    folder = store.fetch(ModelId.parse("acme/macros"))
    assert folder.path.is_relative_to(tmp_path / "cache")
    assert (folder.path / "model.onnx").read_bytes() == bytes(range(256)) * 64
    assert folder.manifest.labels == ("x", "y")
    assert folder.download_seconds > 0
    archive = store.fetch(ModelId.parse("acme/packed.tar.gz"))
    assert (archive.path / "model.onnx").read_bytes() == b"packed-v1"
    bare = store.fetch(ModelId.parse("globex/solo.onnx"))
    assert (bare.path / bare.manifest.model_file).read_bytes() == b"bare model"
    # A second fetch is served from the disk copy.
    again = store.fetch(ModelId.parse("acme/macros"))
    assert again.path == folder.path
    assert again.download_seconds == 0.0


def test_list(bucket: str, tmp_path: Path) -> None:
    store = _store(bucket, tmp_path)
    assert store.list() == ["acme/macros", "acme/packed.tar.gz", "globex/solo.onnx"]
    assert store.list("acme") == ["acme/macros", "acme/packed.tar.gz"]
    assert store.list("initech") == []


def test_missing_model(bucket: str, tmp_path: Path) -> None:
    store = _store(bucket, tmp_path)
    for raw in ("acme/absent", "initech/macros", "acme"):
        with pytest.raises(ModelNotFound):
            store.fetch(ModelId.parse(raw))


def test_changed_object_is_fetched_again(bucket: str, s3_env: S3Server, tmp_path: Path) -> None:
    store = _store(bucket, tmp_path)
    model_id = ModelId.parse("acme/packed.tar.gz")
    first = store.fetch(model_id)
    s3_env.put_bytes(bucket, "models/acme/packed.tar.gz", _tar_gz({"model.onnx": b"v2"}))
    second = store.fetch(model_id)
    assert second.path != first.path
    assert (second.path / "model.onnx").read_bytes() == b"v2"


def test_concurrent_fetches_share_one_copy(bucket: str, tmp_path: Path) -> None:
    store = _store(bucket, tmp_path)
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(store.fetch, ModelId.parse("acme/macros")) for _ in range(6)]
        paths = {future.result(timeout=60).path for future in futures}
    assert len(paths) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == [
        next(iter(paths)).name
    ]


def test_wrong_credentials(
    bucket: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wrong = "not-the-secret-" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    store = _store(bucket, tmp_path)
    for call in (lambda: store.fetch(ModelId.parse("acme/macros")), store.check):
        with pytest.raises(StoreUnavailable, match="refused access") as info:
            call()
        message = str(info.value)
        for leaked in (wrong, s3_env.secret_key, s3_env.access_key, str(tmp_path)):
            assert leaked not in message


def test_unreachable_endpoint(
    bucket: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    store = _store(bucket, tmp_path, retry_deadline_s=1)
    # No connection at all: a store that is down, told apart from a slow one.
    with pytest.raises(StoreUnreachable, match="could not be connected to") as info:
        store.fetch(ModelId.parse("acme/macros"))
    assert s3_env.secret_key not in str(info.value)
    with pytest.raises(StoreUnavailable):
        store.check()


def test_versions_are_numbered_prefixes_in_s3(s3_env: S3Server, tmp_path: Path) -> None:
    name = s3_env.create_bucket()
    tree = tmp_path / "upload"
    files = {
        "acme/ranker/1/model.onnx": b"version one",
        "acme/ranker/2/model.onnx": b"version two",
        "acme/ranker/aliases.json": b'{"stable": 1}',
        "acme/plain/model.onnx": b"plain",
        "acme/packed.tar.gz": _tar_gz({"packed/model.onnx": b"packed"}),
    }
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    s3_env.upload_tree(tree, name, "models")
    store = _store(name, tmp_path)
    found = store.versions(ModelId.parse("acme/ranker"))
    assert found is not None
    assert (found.versions, dict(found.aliases)) == ((1, 2), {"stable": 1})
    for unversioned in ("acme/plain", "acme/packed.tar.gz", "acme/missing"):
        assert store.versions(ModelId.parse(unversioned)) is None
    two = store.fetch(ModelId.parse("acme/ranker/2"))  # a version is an ordinary artifact
    assert (two.path / "model.onnx").read_bytes() == b"version two"
    assert "acme/ranker/1" in store.list("acme")
