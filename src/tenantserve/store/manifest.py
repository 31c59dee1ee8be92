"""Parse and validate the per-model manifest (``model.json``) and check the model file's digest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from tenantserve.convert.registry import framework_for, native_file
from tenantserve.errors import Forbidden, LoadFailed, ModelNotFound
from tenantserve.types import MANIFEST_NAME as MANIFEST_NAME  # the store's modules import it here
from tenantserve.types import (
    ModelManifest,
    OrtFormat,
    SharedBase,
    TextPreprocess,
    TopKPostprocess,
)

DEFAULT_MODEL_FILE = ModelManifest().model_file
MAX_MANIFEST_BYTES = 1024 * 1024
_FIELDS = frozenset(
    {"runtime", "model_file", "labels", "memory_hint_bytes", "sha256", "metadata",
     "preprocess", "postprocess", "base", "ort_format"}
)  # fmt: skip
_PREPROCESS_FIELDS = frozenset({"tokenizer_file", "max_length", "text_input"})
_POSTPROCESS_FIELDS = frozenset({"top_k", "scores_output"})
MAX_TOKENS = 8192
MAX_TENSOR_NAME_CHARS = 256
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_manifest(raw: bytes) -> ModelManifest:
    """Turn the bytes of a ``model.json`` into a :class:`ModelManifest`.

    Raises:
        LoadFailed: not a JSON object, an unknown key, or a field of the wrong type; the
            message names the field.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise LoadFailed(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadFailed(f"{MANIFEST_NAME} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise LoadFailed(f"{MANIFEST_NAME} must hold a JSON object")
    unknown = sorted(str(key) for key in data if key not in _FIELDS)
    if unknown:
        raise LoadFailed(f"{MANIFEST_NAME} has unknown field(s): {', '.join(unknown[:5])}")
    defaults = ModelManifest()
    labels = _labels(data.get("labels"))
    postprocess = _postprocess(data.get("postprocess"))
    if postprocess is not None and not labels:
        raise _field_error("postprocess", "declared with 'labels' (the names it ranks)")
    return ModelManifest(
        runtime=_runtime(data.get("runtime", defaults.runtime)),
        model_file=_file_name("model_file", data.get("model_file", defaults.model_file)),
        labels=labels,
        memory_hint_bytes=_memory_hint(data.get("memory_hint_bytes")),
        sha256=_sha256(data.get("sha256")),
        metadata=_metadata(data.get("metadata", {})),
        preprocess=_preprocess(data.get("preprocess")),
        base=_base(data.get("base")),
        postprocess=postprocess,
        ort_format=_ort_format(data.get("ort_format")),
    )


def read_manifest(folder: Path) -> ModelManifest:
    """The manifest of the artifact in ``folder``; defaults when it has no ``model.json``.

    Without a ``model_file`` in it and without ``model.onnx``, the model is the folder's
    native file if it has one (``xgboost.json``, ``sklearn.skops`` …: docs/frameworks.md).
    """
    path = folder / MANIFEST_NAME
    try:
        with path.open("rb") as file:
            # Read one byte past the cap so an oversized file is refused, not truncated.
            raw = file.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        manifest = ModelManifest()
    except OSError as exc:
        raise LoadFailed(f"{MANIFEST_NAME} could not be read ({type(exc).__name__})") from exc
    else:
        manifest = parse_manifest(raw)
    if manifest.model_file == DEFAULT_MODEL_FILE and not (folder / DEFAULT_MODEL_FILE).is_file():
        native = native_file(folder)
        if native is not None:
            return dataclasses.replace(manifest, model_file=native)
    return manifest


def checked_manifest(
    folder: Path,
    label: str,
    *,
    root: Path | None = None,
    verified: VerifiedFiles | None = None,
    resolved: bool = False,
) -> ModelManifest:
    """The manifest of the artifact in ``folder``, once its model file is found and verified.

    Args:
        folder: the artifact folder.
        label: how messages name the artifact, e.g. ``model acme/macros``.
        root: when given, every file the artifact reads (``model.json``, the model, tokenizer
            and base files), links resolved, must lie under it: a local store served in place
            passes the artifact's own folder, so no link reaches another model or tenant.
        resolved: ``root`` is already resolved (no links in it): not resolved again.

    Raises:
        ModelNotFound: the folder holds neither ``model.json`` nor the default model file.
        LoadFailed: the manifest is invalid, names a missing file, or the digest differs.
        Forbidden: a file resolves outside ``root`` (a policy refusal: 403, not a 500).
    """
    inside = root if resolved or root is None else root.resolve()
    # Checked before it is read: a linked manifest would bring another model's labels.
    _check_inside(folder / MANIFEST_NAME, inside, label, MANIFEST_NAME)
    manifest = read_manifest(folder)
    model_path = folder / manifest.model_file
    if not model_path.is_file():
        if not (folder / MANIFEST_NAME).is_file():
            raise ModelNotFound(f"{label} not found in the store (no model file)")
        raise LoadFailed(f"{label}: {MANIFEST_NAME} names a model file that is missing")
    _check_inside(model_path, inside, label, "the model file")
    if manifest.preprocess is not None:
        # The runtime opens the tokenizer as it opens the model: same checks, same place.
        tokenizer_path = folder / manifest.preprocess.tokenizer_file
        if not tokenizer_path.is_file():
            raise LoadFailed(f"{label}: {MANIFEST_NAME} names a tokenizer file that is missing")
        _check_inside(tokenizer_path, inside, label, "the tokenizer file")
    if manifest.base is not None:
        # Its digest is verified by the runtime when the shared session is first created;
        # hashing it here too would cost every load of every tenant a pass over the base.
        base_path = folder / manifest.base.model_file
        if not base_path.is_file():
            raise LoadFailed(f"{label}: {MANIFEST_NAME} names a base model file that is missing")
        _check_inside(base_path, inside, label, "the base model file")
    if manifest.ort_format is not None:
        # Its digest is checked as the runtime copies it; when missing, the model is converted.
        ort_path = folder / manifest.ort_format.model_file
        _check_inside(ort_path, inside, label, "the ORT-format model file")
    if not _left_to_runtime(manifest):
        verify_sha256(model_path, manifest, verified, label=label)
    return manifest


def _left_to_runtime(manifest: ModelManifest) -> bool:
    """Whether the runtime checks the model file's digest itself (``runs_published_ort``; a
    native file is converted from, so checked here): hashing it here cost every first load a
    pass over bytes it never read (7 ms for 10 MB)."""
    return manifest.runs_published_ort and framework_for(manifest.model_file) is None


def _check_inside(path: Path, root: Path | None, label: str, what: str) -> None:
    if root is None or (path.parent == root and not path.is_symlink()):
        return  # a file right in the (resolved) folder, not a link: inside, by one lstat
    # resolve() follows every link, a dangling one too, so a link to a missing file elsewhere
    # is refused as well; the message never shows either path.
    if not path.resolve().is_relative_to(root):
        raise Forbidden(f"{label}: {what} resolves outside the model's folder in the store")


class VerifiedFiles:
    """Digests already checked, by file identity (device, inode, size, mtime, digest).

    A local store serves artifacts in place, so without this an unchanged model file is hashed
    again on every load (about 6 ms per 8 MB); a replaced file has a new identity.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._keys: OrderedDict[tuple[int, int, int, int, str], None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path, sha256: str) -> tuple[int, int, int, int, str] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256)

    def __contains__(self, key: tuple[int, int, int, int, str]) -> bool:
        with self._lock:
            return key in self._keys

    def add(self, key: tuple[int, int, int, int, str]) -> None:
        with self._lock:
            self._keys[key] = None
            if len(self._keys) > self._max_entries:
                self._keys.popitem(last=False)


def verify_sha256(
    model_path: Path,
    manifest: ModelManifest,
    verified: VerifiedFiles | None = None,
    *,
    label: str = "",
) -> None:
    """Raise :class:`LoadFailed` if the manifest names a digest that the model file lacks.

    ``label`` (e.g. ``model acme/macros``) starts the message when given.
    """
    if manifest.sha256 is None:
        return
    key = VerifiedFiles.key(model_path, manifest.sha256) if verified is not None else None
    if key is not None and verified is not None and key in verified:
        return
    head = f"{label}: " if label else ""
    try:
        with model_path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256")
    except OSError as exc:
        raise LoadFailed(
            f"{head}model file {manifest.model_file!r} could not be read ({type(exc).__name__})"
        ) from exc
    if digest.hexdigest() != manifest.sha256:
        raise LoadFailed(
            f"{head}model file {manifest.model_file!r} does not match the sha256 in {MANIFEST_NAME}"
        )
    if key is not None and verified is not None:
        verified.add(key)


def _field_error(name: str, expected: str) -> LoadFailed:
    return LoadFailed(f"{MANIFEST_NAME} field {name!r} must be {expected}")


def _runtime(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _field_error("runtime", "a non-empty string")
    return value


def _file_name(name: str, value: object) -> str:
    # The runtime joins this name to the artifact folder, so only a plain file name is safe.
    if (
        not isinstance(value, str)
        or not value
        or "/" in value
        or "\\" in value
        or ".." in value
        or value == "."
        or not value.isprintable()
    ):
        raise _field_error(name, "a plain file name (no '/', '\\' or '..')")
    return value


def _labels(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _field_error("labels", "a list of strings")
    return tuple(value)


def _memory_hint(value: object) -> int | None:
    if value is None:
        return None
    # bool is an int subclass; `true` is not a byte count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _field_error("memory_hint_bytes", "a non-negative integer")
    return value


def _sha256(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256.fullmatch(value.lower()):
        raise _field_error("sha256", "64 hexadecimal digits")
    return value.lower()


def _metadata(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise _field_error("metadata", "an object of string values")
    return dict(value)


def _preprocess(value: object) -> TextPreprocess | None:
    if value is None:
        return None
    fields = _step("preprocess", value, _PREPROCESS_FIELDS)
    defaults = TextPreprocess()
    max_length = fields.get("max_length", defaults.max_length)
    if not _is_int(max_length) or not 1 <= max_length <= MAX_TOKENS:
        raise _field_error("preprocess.max_length", f"a whole number from 1 to {MAX_TOKENS}")
    return TextPreprocess(
        tokenizer_file=_file_name(
            "preprocess.tokenizer_file", fields.get("tokenizer_file", defaults.tokenizer_file)
        ),
        max_length=max_length,
        text_input=_tensor_name(
            "preprocess.text_input", fields.get("text_input", defaults.text_input)
        ),
    )


def _base(value: object) -> SharedBase | None:
    if value is None:
        return None
    fields = _step("base", value, frozenset({"model_file", "sha256"}))
    if "model_file" not in fields or "sha256" not in fields:
        raise _field_error("base", "an object with 'model_file' and 'sha256'")
    digest = fields["sha256"]
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise _field_error("base.sha256", "64 hexadecimal digits")
    return SharedBase(_file_name("base.model_file", fields["model_file"]), digest.lower())


def _ort_format(value: object) -> OrtFormat | None:
    if value is None:
        return None
    fields = _step("ort_format", value, frozenset({"model_file", "sha256", "onnxruntime"}))
    if set(fields) != {"model_file", "sha256", "onnxruntime"}:
        raise _field_error("ort_format", "an object with 'model_file', 'sha256', 'onnxruntime'")
    digest, version = fields["sha256"], fields["onnxruntime"]
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
        raise _field_error("ort_format.sha256", "64 hexadecimal digits")
    if not isinstance(version, str) or not version.strip() or not version.isprintable():
        raise _field_error("ort_format.onnxruntime", "an ONNX Runtime version, e.g. '1.31.1'")
    return OrtFormat(
        _file_name("ort_format.model_file", fields["model_file"]), digest.lower(), version
    )


def _postprocess(value: object) -> TopKPostprocess | None:
    if value is None:
        return None
    fields = _step("postprocess", value, _POSTPROCESS_FIELDS)
    if "scores_output" not in fields:
        raise _field_error("postprocess.scores_output", "given (the output holding the scores)")
    step = TopKPostprocess(
        scores_output=_tensor_name("postprocess.scores_output", fields["scores_output"])
    )
    if "top_k" not in fields:
        return step
    top_k = fields["top_k"]
    if not _is_int(top_k) or top_k < 1:
        raise _field_error("postprocess.top_k", "a whole number of at least 1")
    return dataclasses.replace(step, top_k=top_k)


def _step(name: str, value: object, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _field_error(name, "a JSON object")
    unknown = sorted(str(key) for key in value if key not in known)
    if unknown:
        raise LoadFailed(
            f"{MANIFEST_NAME} field {name!r} has unknown key(s): {', '.join(unknown[:5])}"
        )
    return value


def _tensor_name(name: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_TENSOR_NAME_CHARS
        or not value.isprintable()
    ):
        raise _field_error(
            name, f"a tensor name of 1 to {MAX_TENSOR_NAME_CHARS} printable characters"
        )
    return value


def _is_int(value: object) -> bool:
    # bool is an int subclass; `true` is not a count.
    return isinstance(value, int) and not isinstance(value, bool)
