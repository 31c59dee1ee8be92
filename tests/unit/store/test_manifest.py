"""model.json parsing and validation, and the model file's digest check."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from tenantserve.errors import Forbidden, LoadFailed, ModelNotFound
from tenantserve.store.manifest import (
    checked_manifest,
    parse_manifest,
    read_manifest,
    verify_sha256,
)
from tenantserve.types import ModelManifest, OrtFormat, TextPreprocess, TopKPostprocess


def _raw(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_missing_manifest_gives_defaults(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) == ModelManifest()


def test_every_field_is_parsed() -> None:
    digest = "ab" * 32
    manifest = parse_manifest(
        _raw(
            runtime="onnx",
            model_file="net.onnx",
            labels=["cat", "dog"],
            memory_hint_bytes=1024,
            sha256=digest.upper(),
            metadata={"owner": "acme"},
            preprocess={"tokenizer_file": "vocab.json", "max_length": 256, "text_input": "ticket"},
            postprocess={"top_k": 3, "scores_output": "logits"},
        )
    )
    assert manifest.model_file == "net.onnx"
    assert manifest.labels == ("cat", "dog")
    assert manifest.memory_hint_bytes == 1024
    assert manifest.sha256 == digest
    assert dict(manifest.metadata) == {"owner": "acme"}
    assert manifest.preprocess == TextPreprocess("vocab.json", 256, "ticket")
    assert manifest.postprocess == TopKPostprocess(scores_output="logits", top_k=3)


def test_steps_take_their_defaults() -> None:
    manifest = parse_manifest(
        _raw(labels=["a", "b"], preprocess={}, postprocess={"scores_output": "probabilities"})
    )
    assert manifest.preprocess == TextPreprocess()
    assert manifest.postprocess == TopKPostprocess(scores_output="probabilities")
    assert parse_manifest(_raw(preprocess=None, postprocess=None)) == ModelManifest()


@pytest.mark.parametrize("labels", [None, []])
def test_postprocess_needs_labels(labels: list[str] | None) -> None:
    with pytest.raises(LoadFailed, match="'postprocess' must be declared with 'labels'"):
        parse_manifest(_raw(labels=labels, postprocess={"scores_output": "probabilities"}))


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("preprocess", "tokenizer.json", "'preprocess'"),
        ("preprocess", {"tokenizer": "t.json"}, "'preprocess' has unknown key"),
        ("preprocess", {"max_length": 0}, "preprocess.max_length"),
        ("preprocess", {"max_length": 8193}, "preprocess.max_length"),
        ("preprocess", {"max_length": 12.5}, "preprocess.max_length"),
        ("preprocess", {"max_length": True}, "preprocess.max_length"),
        ("preprocess", {"tokenizer_file": "../t.json"}, "preprocess.tokenizer_file"),
        ("preprocess", {"tokenizer_file": "sub/t.json"}, "preprocess.tokenizer_file"),
        ("preprocess", {"tokenizer_file": 3}, "preprocess.tokenizer_file"),
        ("preprocess", {"text_input": ""}, "preprocess.text_input"),
        ("preprocess", {"text_input": "a\nb"}, "preprocess.text_input"),
        ("postprocess", ["probabilities"], "'postprocess'"),
        ("postprocess", {"top_k": 3}, "postprocess.scores_output"),
        ("postprocess", {"scores_output": "p", "k": 3}, "'postprocess' has unknown key"),
        ("postprocess", {"scores_output": "p", "top_k": 0}, "postprocess.top_k"),
        ("postprocess", {"scores_output": "p", "top_k": "3"}, "postprocess.top_k"),
        ("postprocess", {"scores_output": "p", "top_k": False}, "postprocess.top_k"),
        ("postprocess", {"scores_output": 7}, "postprocess.scores_output"),
    ],
)
def test_wrong_steps_name_the_field(field: str, value: object, named: str) -> None:
    with pytest.raises(LoadFailed) as caught:
        parse_manifest(_raw(labels=["a", "b"], **{field: value}))
    assert named in str(caught.value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(LoadFailed, match="handler"):
        parse_manifest(_raw(handler="evil.py"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runtime", 3),
        ("runtime", ""),
        ("model_file", ["model.onnx"]),
        ("labels", "cat,dog"),
        ("labels", ["cat", 2]),
        ("memory_hint_bytes", "1024"),
        ("memory_hint_bytes", True),
        ("memory_hint_bytes", -1),
        ("sha256", "abc"),
        ("metadata", {"k": 1}),
        ("metadata", ["k"]),
    ],
)
def test_wrong_type_names_the_field(field: str, value: object) -> None:
    with pytest.raises(LoadFailed, match=field):
        parse_manifest(_raw(**{field: value}))


@pytest.mark.parametrize(
    "name", ["../model.onnx", "sub/model.onnx", "/etc/passwd", "..", ".", "a\\b", "x\x00y", ""]
)
def test_model_file_must_be_a_plain_name(name: str) -> None:
    with pytest.raises(LoadFailed, match="model_file"):
        parse_manifest(_raw(model_file=name))


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(LoadFailed, match=r"model\.json"):
        parse_manifest(raw)


def test_null_optional_fields_are_none() -> None:
    manifest = parse_manifest(_raw(labels=None, sha256=None, memory_hint_bytes=None))
    assert manifest.labels is None
    assert manifest.sha256 is None
    assert manifest.memory_hint_bytes is None


def test_oversized_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_bytes(b" " * (2 * 1024 * 1024) + b"{}")
    with pytest.raises(LoadFailed, match="larger"):
        read_manifest(tmp_path)


def test_sha256_match_and_mismatch(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights")
    good = ModelManifest(sha256=hashlib.sha256(b"weights").hexdigest())
    verify_sha256(model, good)
    bad = ModelManifest(sha256="0" * 64)
    with pytest.raises(LoadFailed, match="sha256"):
        verify_sha256(model, bad)


def test_checked_manifest_requires_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        checked_manifest(tmp_path, "model acme/x")
    (tmp_path / "model.json").write_text(json.dumps({"model_file": "net.onnx"}))
    with pytest.raises(LoadFailed, match="missing"):
        checked_manifest(tmp_path, "model acme/x")
    (tmp_path / "net.onnx").write_bytes(b"w")
    assert checked_manifest(tmp_path, "model acme/x").model_file == "net.onnx"


def test_checked_manifest_refuses_a_model_file_linked_out(tmp_path: Path) -> None:
    root = tmp_path / "store"
    folder = root / "acme" / "m"
    folder.mkdir(parents=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours")
    (folder / "model.onnx").symlink_to(secret)
    with pytest.raises(Forbidden, match="outside") as info:
        checked_manifest(folder, "model acme/m", root=root.resolve())
    assert str(tmp_path) not in str(info.value)


def _with_tokenizer(folder: Path) -> None:
    (folder / "model.json").write_text(json.dumps({"preprocess": {"tokenizer_file": "vocab.json"}}))
    (folder / "model.onnx").write_bytes(b"w")


def test_checked_manifest_requires_the_tokenizer_file(tmp_path: Path) -> None:
    _with_tokenizer(tmp_path)
    with pytest.raises(LoadFailed, match="tokenizer file that is missing"):
        checked_manifest(tmp_path, "model acme/x")
    (tmp_path / "vocab.json").write_text("{}")
    manifest = checked_manifest(tmp_path, "model acme/x")
    assert manifest.preprocess == TextPreprocess(tokenizer_file="vocab.json")


def test_checked_manifest_refuses_a_tokenizer_file_linked_out(tmp_path: Path) -> None:
    root = tmp_path / "store"
    folder = root / "acme" / "m"
    folder.mkdir(parents=True)
    _with_tokenizer(folder)
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (folder / "vocab.json").symlink_to(secret)
    with pytest.raises(Forbidden, match="tokenizer file resolves outside") as info:
        checked_manifest(folder, "model acme/m", root=root.resolve())
    assert str(tmp_path) not in str(info.value)


def test_base_is_parsed_and_checked() -> None:
    digest = "ab" * 32
    manifest = parse_manifest(
        json.dumps({"base": {"model_file": "encoder.onnx", "sha256": digest.upper()}}).encode()
    )
    assert manifest.base is not None
    assert manifest.base.sha256 == digest
    for bad, field in [
        ({"model_file": "encoder.onnx"}, "base"),
        ({"model_file": "../x.onnx", "sha256": digest}, "base.model_file"),
        ({"model_file": "e.onnx", "sha256": "short"}, "base.sha256"),
        ({"model_file": "e.onnx", "sha256": digest, "extra": 1}, "base"),
    ]:
        with pytest.raises(LoadFailed, match=re.escape(field)):
            parse_manifest(json.dumps({"base": bad}).encode())


def test_ort_format_is_parsed_and_checked() -> None:
    digest = "cd" * 32
    entry = {"model_file": "model.ort", "sha256": digest.upper(), "onnxruntime": "1.31.1"}
    manifest = parse_manifest(json.dumps({"ort_format": entry}).encode())
    assert manifest.ort_format == OrtFormat("model.ort", digest, "1.31.1")
    for bad, field in [
        ({"model_file": "model.ort", "sha256": digest}, "ort_format"),
        ({**entry, "model_file": "../x.ort"}, "ort_format.model_file"),
        ({**entry, "sha256": "short"}, "ort_format.sha256"),
        ({**entry, "onnxruntime": 131}, "ort_format.onnxruntime"),
        ({**entry, "extra": 1}, "ort_format"),
    ]:
        with pytest.raises(LoadFailed, match=re.escape(field)):
            parse_manifest(json.dumps({"ort_format": bad}).encode())


def test_checked_manifest_refuses_an_ort_format_file_linked_out(tmp_path: Path) -> None:
    root = tmp_path / "store"
    folder = root / "acme" / "m"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"w")
    entry = {"model_file": "model.ort", "sha256": "cd" * 32, "onnxruntime": "1.31.1"}
    (folder / "model.json").write_text(json.dumps({"ort_format": entry}))
    assert checked_manifest(folder, "model acme/m", root=root.resolve()).ort_format is not None
    secret = tmp_path / "secret.ort"
    secret.write_bytes(b"not yours")
    (folder / "model.ort").symlink_to(secret)
    with pytest.raises(Forbidden, match="ORT-format model file resolves outside") as info:
        checked_manifest(folder, "model acme/m", root=root.resolve())
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize(
    ("fields", "checked"),
    [
        ({}, False),  # an ONNX model runs its published file: the runtime checks model.onnx
        ({"model_file": "xgboost.json"}, True),  # a native file is converted from: checked
        ({"runtime": "custom"}, True),  # another runtime may read the file as it likes
    ],
)
def test_the_store_leaves_a_digest_to_the_runtime_only_for_onnx_with_a_published_file(
    tmp_path: Path, fields: dict[str, str], checked: bool
) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    model_file = fields.get("model_file", "model.onnx")
    (folder / model_file).write_bytes(b"not the declared bytes")
    (folder / "model.ort").write_bytes(b"ort")
    published = {"model_file": "model.ort", "sha256": "cd" * 32, "onnxruntime": "1.31.1"}
    manifest = {"sha256": "ab" * 32, "ort_format": published, **fields}
    (folder / "model.json").write_text(json.dumps(manifest))
    if checked:
        with pytest.raises(LoadFailed, match="does not match the sha256"):
            checked_manifest(folder, "model m")
    else:
        assert checked_manifest(folder, "model m").sha256 == "ab" * 32


def test_verified_files_skip_rehash_but_see_a_replaced_file(tmp_path: Path) -> None:
    from tenantserve.store.manifest import VerifiedFiles, verify_sha256

    model = tmp_path / "model.onnx"
    model.write_bytes(b"weights-v1")
    manifest = ModelManifest(sha256=hashlib.sha256(b"weights-v1").hexdigest())
    verified = VerifiedFiles()
    verify_sha256(model, manifest, verified)
    key = VerifiedFiles.key(model, manifest.sha256 or "")
    assert key is not None
    assert key in verified
    model.write_bytes(b"weights-v2 longer")  # a new size and mtime: a new identity
    with pytest.raises(LoadFailed, match="does not match the sha256"):
        verify_sha256(model, manifest, verified)


def test_a_folder_with_a_native_file_and_no_model_onnx_names_it(tmp_path: Path) -> None:
    (tmp_path / "xgboost.ubj").write_bytes(b"{}")
    assert read_manifest(tmp_path).model_file == "xgboost.ubj"
    (tmp_path / "model.json").write_text('{"labels": ["a", "b"]}')
    manifest = read_manifest(tmp_path)
    assert (manifest.model_file, manifest.labels) == ("xgboost.ubj", ("a", "b"))
    (tmp_path / "model.onnx").write_bytes(b"onnx")  # ONNX wins when both are there
    assert read_manifest(tmp_path).model_file == "model.onnx"
