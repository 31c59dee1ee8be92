"""Fast loads: ORT-format files made once in the disk tier, the same answers as from ONNX."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from fixtures.models import external_data_model
from fixtures.shared_base import base_bytes, write_tenant
from tenantserve.errors import LoadFailed
from tenantserve.runtimes import LoadedModel, Runtime, default_runtimes, ort_format
from tenantserve.store.disk_cache import DiskCache
from tenantserve.store.manifest import checked_manifest
from tenantserve.tools.fleet import minilm
from tenantserve.tools.fleet.synth import add_ort_format, write_artifact, write_synthetic_model
from tenantserve.tools.fleet.text import build_tenant_tfidf
from tenantserve.types import ModelManifest

Inputs = dict[str, Any]


def _synthetic(folder: Path) -> Inputs:
    write_synthetic_model(folder, size_bytes=400_000, seed=3)
    return {"input": np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)}


def _tfidf(folder: Path) -> Inputs:
    words = {"card": "lost my card please block", "refund": "where is my refund money"}
    texts = [f"{words[label]} {i}" for label in words for i in range(20)]
    built = build_tenant_tfidf(texts, [label for label in words for _ in range(20)], seed=0)
    manifest = {
        "labels": list(built.labels),
        "sha256": hashlib.sha256(built.onnx_bytes).hexdigest(),
        "postprocess": {"top_k": 2, "scores_output": "probabilities"},
    }
    write_artifact(folder, built.onnx_bytes, manifest)
    return {"text": np.array([["my card is lost"], ["refund please"]], dtype=object)}


def _minilm(folder: Path) -> Inputs:
    encoder_path = minilm.encoder_path()
    rng = np.random.default_rng(2)
    labels = ("a", "b", "c")
    head = minilm.Head((rng.standard_normal((384, 3)) / 5).astype(np.float32),
                       np.zeros(3, np.float32), labels)  # fmt: skip
    head_bytes = minilm.head_model(onnx.load(str(encoder_path)), head)
    encoder = encoder_path.read_bytes()
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(head_bytes)
    (folder / "encoder.onnx").write_bytes(encoder)
    (folder / "tokenizer.json").write_text(minilm.load_tokenizer().to_str())
    manifest = {
        "labels": list(labels),
        "sha256": hashlib.sha256(head_bytes).hexdigest(),
        "preprocess": {"tokenizer_file": "tokenizer.json", "max_length": 128, "text_input": "text"},
        "postprocess": {"top_k": 3, "scores_output": "probabilities"},
        "base": {"model_file": "encoder.onnx", "sha256": hashlib.sha256(encoder).hexdigest()},
    }
    (folder / "model.json").write_text(json.dumps(manifest))
    texts = [["my card was stolen yesterday"], ["how long does a refund take to arrive?"]]
    return {"text": np.array(texts, dtype=object)}


def _shared_base(folder: Path) -> Inputs:
    folder.parent.mkdir(parents=True)
    write_tenant(folder, 4, base_bytes(folder.parent))
    rng = np.random.default_rng(5)
    return {
        "x": rng.standard_normal((3, 8)).astype(np.float32),
        "bias": np.ones((3, 3), np.float32),
    }


KINDS: dict[str, Callable[[Path], Inputs]] = {
    "synthetic": _synthetic, "tfidf": _tfidf, "minilm": _minilm, "shared-base": _shared_base,
}  # fmt: skip


def _load(runtimes: dict[str, Runtime], folder: Path) -> tuple[LoadedModel, ModelManifest]:
    manifest = checked_manifest(folder, "model m")
    return runtimes["onnx"].load(folder, manifest), manifest


@pytest.mark.parametrize("kind", KINDS)
def test_every_fleet_kind_answers_from_its_ort_format_file_as_from_onnx(
    tmp_path: Path, kind: str
) -> None:
    folder = tmp_path / "acme" / "m"
    inputs = KINDS[kind](folder)
    from_onnx, _ = _load(default_runtimes(prepack=True), folder)  # ONNX Runtime's defaults
    fast = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))
    prepared = fast["onnx"].prepare(folder, checked_manifest(folder, "model m"))
    assert prepared.note == ""
    if kind in ("minilm", "shared-base"):  # the head runs as arrays, its base from its file
        assert prepared.held_bytes is not None
        assert prepared.held_bytes > 0
    else:
        assert prepared.mapped_bytes is not None
        assert prepared.mapped_bytes > 0
    from_ort, _ = _load(fast, folder)
    want, got = from_onnx.predict(inputs), from_ort.predict(inputs)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if value.dtype.kind in "OUS":  # labels: the same, in the same order
            assert got[name].tolist() == value.tolist(), name
        else:
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    from_onnx.close()
    from_ort.close()


def test_a_model_that_cannot_convert_loads_from_onnx_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "acme" / "external"
    external_data_model(folder)
    runtime = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))["onnx"]
    with caplog.at_level(logging.WARNING, logger=ort_format.__name__):
        notes = [runtime.prepare(folder, ModelManifest()) for _ in range(3)]
    assert {n.mapped_bytes for n in notes} == {None}  # measured like any ONNX load
    assert notes[0].note.startswith("loads from model.onnx: ONNX Runtime cannot convert it")
    assert len({n.note for n in notes}) == 1
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1
    assert "model.onnx" in said[0]
    assert "loads from ONNX" in said[0]
    model = runtime.load(folder, ModelManifest())
    assert model.predict({"input": np.ones((2, 16), np.float32)})["output"].shape == (2, 256)


def test_files_are_made_once_per_source_digest_and_onnx_runtime_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "acme" / "m"
    write_synthetic_model(folder, size_bytes=50_000, seed=1)
    (folder / "model.ort").unlink()  # no published copy: the server converts
    manifest = json.loads((folder / "model.json").read_text())
    del manifest["ort_format"]
    (folder / "model.json").write_text(json.dumps(manifest))
    disk = DiskCache(tmp_path / "disk", max_bytes=1 << 30)
    runtime = default_runtimes(disk)["onnx"]
    converted: list[int] = []
    real_convert = ort_format.convert

    def convert(data: bytes, target: Path) -> None:
        converted.append(len(data))
        real_convert(data, target)

    monkeypatch.setattr(ort_format, "convert", convert)
    for _ in range(3):
        runtime.prepare(folder, checked_manifest(folder, "model m"))
    assert len(converted) == 1
    assert len(disk.keys()) == 1
    monkeypatch.setattr(ort_format, "ORT_VERSION", "9.9.9")  # a new ONNX Runtime
    runtime.prepare(folder, checked_manifest(folder, "model m"))
    assert len(converted) == 2
    assert len(disk.keys()) == 2
    write_synthetic_model(folder, size_bytes=50_000, seed=2)  # new bytes, new digest
    runtime.prepare(folder, checked_manifest(folder, "model m"))
    assert len(converted) == 3


def test_a_published_copy_is_taken_for_this_version_and_its_digest_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "acme" / "m"
    write_synthetic_model(folder, size_bytes=50_000, seed=1)
    published = json.loads((folder / "model.json").read_text())["ort_format"]
    assert published["onnxruntime"] == ort_format.ORT_VERSION
    converted: list[int] = []

    def convert(data: bytes, target: Path) -> None:
        converted.append(len(data))
        raise ort_format.NoFastLoad("not converted in this test")

    monkeypatch.setattr(ort_format, "convert", convert)
    runtime = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))["onnx"]
    prepared = runtime.prepare(folder, checked_manifest(folder, "model m"))
    assert prepared.note == ""
    assert converted == []
    assert prepared.mapped_bytes == (folder / "model.ort").stat().st_size
    # Another version's copy, or one that does not match its digest, is converted instead.
    for other in ({**published, "onnxruntime": "0.1.0"}, {**published, "sha256": "0" * 64}):
        manifest = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**manifest, "ort_format": other}))
        fresh = default_runtimes(DiskCache(tmp_path / f"disk-{len(converted)}", max_bytes=1 << 30))
        fresh["onnx"].prepare(folder, checked_manifest(folder, "model m"))
    assert len(converted) == 2


def test_an_ort_format_file_that_does_not_load_is_never_served(tmp_path: Path) -> None:
    """ONNX Runtime can write files it cannot read back: a published copy (or a conversion)
    that does not open is not taken, and the model still answers."""
    folder = tmp_path / "acme" / "m"
    write_synthetic_model(folder, size_bytes=50_000, seed=1)
    broken = b"not a flatbuffer" * 64  # its digest in the manifest, so only opening it can tell
    (folder / "model.ort").write_bytes(broken)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["ort_format"]["sha256"] = hashlib.sha256(broken).hexdigest()
    (folder / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ort_format.NoFastLoad, match="its ORT-format file does not load"):
        ort_format.check_loads(folder / "model.ort")
    runtime = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))["onnx"]
    prepared = runtime.prepare(folder, checked_manifest(folder, "model m"))
    assert prepared.note == ""  # converted from model.onnx instead: still a fast load
    model, _ = _load({"onnx": runtime}, folder)
    assert model.predict({"input": np.ones((1, 16), np.float32)})["output"].shape[0] == 1
    model.close()


def test_the_model_file_is_checked_only_where_it_is_read(tmp_path: Path) -> None:
    """With a published ORT-format file the store leaves the ONNX file's digest to the
    runtime, which checks it before reading it: a damaged model.onnx goes unread while the
    published file serves, and is refused by its digest once the model must load from it."""
    folder = tmp_path / "acme" / "m"
    write_synthetic_model(folder, size_bytes=50_000, seed=1)
    onnx_bytes = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(onnx_bytes[:-1] + bytes([onnx_bytes[-1] ^ 1]))
    runtime = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))["onnx"]
    manifest = checked_manifest(folder, "model m")  # not hashed here any more
    assert runtime.prepare(folder, manifest).note == ""
    model, _ = _load({"onnx": runtime}, folder)
    assert model.predict({"input": np.ones((1, 16), np.float32)})["output"].shape[0] == 1
    model.close()
    # Without a disk tier (no fast loads) the ONNX file is what loads: checked, refused.
    bare = default_runtimes()["onnx"]
    with pytest.raises(LoadFailed, match=r"'model\.onnx' does not match the sha256 in model\.json"):
        bare.load(folder, manifest)
    # A manifest without a published file is checked by the store, as before.
    plain = json.loads((folder / "model.json").read_text())
    del plain["ort_format"]
    (folder / "model.json").write_text(json.dumps(plain))
    with pytest.raises(LoadFailed, match="does not match the sha256"):
        checked_manifest(folder, "model m")


def test_a_base_file_is_made_from_bytes_of_its_declared_digest_only(tmp_path: Path) -> None:
    base = base_bytes(tmp_path)
    liar = tmp_path / "liar"
    write_tenant(liar, 1, base)
    (liar / "encoder.onnx").write_bytes(base[:-1] + b"\x00")
    runtime = default_runtimes(DiskCache(tmp_path / "disk", max_bytes=1 << 30))["onnx"]
    manifest = checked_manifest(liar, "model liar")
    prepared = runtime.prepare(liar, manifest)
    assert "its base loads from encoder.onnx" in prepared.note
    with pytest.raises(LoadFailed, match="does not match its declared sha256"):
        runtime.load(liar, manifest)
    assert runtime.shared_usage().held_bytes == 0


def test_publishing_skips_the_ort_format_copy_of_a_model_that_cannot_convert(
    tmp_path: Path,
) -> None:
    external_data_model(tmp_path / "m")
    assert add_ort_format(tmp_path / "m", (tmp_path / "m" / "model.onnx").read_bytes()) is None
    assert not (tmp_path / "m" / "model.ort").exists()
