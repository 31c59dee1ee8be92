"""Vocabulary every layer speaks: model ids, tensors, manifests, signatures (no I/O)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.errors import InvalidModelId

Tensors = Mapping[str, npt.NDArray[Any]]
"""Named numpy arrays: what goes into and comes out of a model."""

MAX_MODEL_ID_CHARS = 256
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class ModelId:
    """A model's path relative to the store root; its first segment is the tenant.

    Only built through :meth:`parse`, so every ``ModelId`` in the system is safe to join to a
    store root: no ``..``, no absolute path, no empty segment, no control character.
    """

    value: str

    @classmethod
    def parse(cls, raw: str) -> ModelId:
        """Validate ``raw`` (e.g. ``acme/macros.tar.gz``) or raise :class:`InvalidModelId`."""
        if not raw:
            raise InvalidModelId("model id is empty")
        if len(raw) > MAX_MODEL_ID_CHARS:
            raise InvalidModelId(f"model id is longer than {MAX_MODEL_ID_CHARS} characters")
        segments = raw.split("/")
        for segment in segments:
            # The segment grammar excludes "", ".", ".." (must start alphanumeric), "\\",
            # whitespace and control characters in one rule.
            if not _SEGMENT.fullmatch(segment):
                raise InvalidModelId(
                    f"model id {_printable(raw)!r} is invalid: each '/'-separated segment must "
                    "start with a letter or digit and hold only letters, digits, '.', '_' or '-'"
                )
        return cls(raw)

    @property
    def tenant(self) -> str:
        """The first segment (``acme/macros`` → ``acme``), as SageMaker's TargetModel prefix."""
        return self.value.split("/", 1)[0]

    def __str__(self) -> str:
        return self.value


VERSION_SEPARATOR = "@"
DEFAULT_ALIAS = "stable"
"""The alias a bare id follows when a model sets it; without it a bare id serves the
highest version (docs/versions.md)."""
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def is_version(text: str) -> bool:
    """Whether ``text`` is a version number as folders and requests spell it (``1``, ``12``)."""
    return _VERSION.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model as a request names it: an id and what picks its version.

    ``selector`` is ``""`` (the model's default version), a version number (``"2"``) or an
    alias (``"stable"``). Ids spell it after ``@`` (``acme/macros@2``, ``acme/macros@stable``:
    ``@`` is in no id); OIP and gRPC also give it as a separate version field.
    """

    model_id: ModelId
    selector: str = ""

    @classmethod
    def parse(cls, raw: str, version: str = "") -> ModelRef:
        """``raw`` (``acme/macros``, ``acme/macros@2``) with an optional separate ``version``
        (OIP's ``/versions/{v}``, gRPC's ``model_version``), a number or an alias too.

        Raises:
            InvalidModelId: the id, or what follows its ``@``, is not valid, or the two
                versions disagree.
        """
        name, at, selector = raw.partition(VERSION_SEPARATOR)
        model_id = ModelId.parse(name)
        if at:
            check_selector(model_id, selector)
        if version:
            check_selector(model_id, version)
            if at and selector != version:
                raise InvalidModelId(
                    f"model {model_id} is named with @{selector} and asked for version "
                    f"{_printable(version)}: name one version"
                )
            selector = version
        return cls(model_id, selector)

    @property
    def unversioned_answers(self) -> bool:
        """Whether a model without numbered versions answers it: the default, or version 1."""
        return self.selector in ("", "1")

    def __str__(self) -> str:
        if not self.selector:
            return self.model_id.value
        return f"{self.model_id}{VERSION_SEPARATOR}{self.selector}"


def is_alias(text: str) -> bool:
    """Whether ``text`` is an alias name: a letter, then letters, digits, ``_`` or ``-``."""
    return _ALIAS.fullmatch(text) is not None


def check_selector(model_id: ModelId, selector: str) -> None:
    """Refuse what cannot follow ``@``: neither a version number nor an alias name.

    Raises:
        InvalidModelId: naming the rule.
    """
    if not (is_version(selector) or is_alias(selector)):
        raise InvalidModelId(
            f"version {_printable(selector)!r} of model {model_id} is neither a version number "
            "(a whole number from 1) nor an alias (a letter, then letters, digits, '_' or '-')"
        )


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A :class:`ModelRef` resolved to one version: what answers name, what the cache holds.

    ``name`` is the id as asked (``acme/macros``), ``version`` the version that serves
    (``"2"``; ``"1"`` for a model without numbered folders) and ``key`` the id of that
    version's own artifact and cache entry (``acme/macros/2``; the id itself when unversioned).
    """

    name: ModelId
    version: str
    key: ModelId

    @classmethod
    def unversioned(cls, model_id: ModelId) -> ResolvedModel:
        return cls(model_id, "1", model_id)


def _printable(raw: str) -> str:
    # Never echo control characters or unbounded input back into logs or error bodies.
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in raw[:80])
    return cleaned + ("…" if len(raw) > 80 else "")


# OIP v2 datatype names ⇄ numpy dtypes. BYTES holds Python str/bytes in an object array.
DATATYPE_TO_DTYPE: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The OIP datatype name of a numpy array (strings and bytes are ``BYTES``)."""
    if array.dtype.kind in ("O", "U", "S"):
        return "BYTES"
    for name, dtype in DATATYPE_TO_DTYPE.items():
        if dtype == array.dtype:
            return name
    raise ValueError(f"no OIP datatype for numpy dtype {array.dtype}")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model: name, OIP datatype, shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TextPreprocess:
    """A declared pre-processing step: raw text in, token tensors to the graph.

    The server, not the client, tokenises: the model exposes one BYTES input ``text_input``
    and the runtime feeds the graph ``input_ids``/``attention_mask``/``token_type_ids`` made
    with the artifact's own ``tokenizer_file`` (Hugging Face ``tokenizers`` JSON).
    """

    tokenizer_file: str = "tokenizer.json"
    max_length: int = 128
    text_input: str = "text"


@dataclass(frozen=True, slots=True)
class TopKPostprocess:
    """A declared post-processing step: a [N, labels] score output → the top-k labels.

    Adds two outputs: ``macros`` (BYTES [N, k], label names from the manifest, best first) and
    ``scores`` (FP32 [N, k]).
    """

    scores_output: str
    top_k: int = 5


@dataclass(frozen=True, slots=True)
class SharedBase:
    """A declared shared part: a base graph (e.g. a sentence encoder) identified by digest.

    The runtime holds one session per ``sha256`` whatever the number of models declaring it,
    runs it first, and feeds its outputs (plus any request input the head also takes) to the
    model's own ``model_file`` — the per-tenant head. The digest is checked against the file
    when that session is first created, so no artifact can pass a different graph off under
    another's digest.
    """

    model_file: str
    sha256: str


@dataclass(frozen=True, slots=True)
class OrtFormat:
    """A published ORT-format copy of ``model_file``, made by ONNX Runtime ``onnxruntime``.

    ORT format loads by mapping the file (no parse, no copy of the weights). The server takes
    the copy only when its own ONNX Runtime has the same version; otherwise it converts
    ``model_file`` itself. ``sha256`` is the ORT file's own digest.
    """

    model_file: str
    sha256: str
    onnxruntime: str


MANIFEST_NAME = "model.json"
"""The file in a model's folder that :class:`ModelManifest` is read from."""


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """What ``model.json`` beside an artifact may declare; every field is optional.

    Attributes:
        runtime: which runtime loads the artifact (``onnx`` by default).
        model_file: the file inside the artifact folder the runtime opens.
        labels: class names, for classifiers whose output is an index or a score row.
        memory_hint_bytes: expected resident size, used to make room before the first load.
        sha256: expected digest of ``model_file``; a mismatch refuses the load.
        metadata: free-form facts shown in model metadata (never interpreted).
        preprocess: text → tokens, done by the runtime (see :class:`TextPreprocess`).
        postprocess: scores → top-k labels, done by the runtime (see :class:`TopKPostprocess`).
        base: a shared base graph held once for every model that declares it.
        ort_format: a published ORT-format copy of ``model_file`` (see :class:`OrtFormat`).
    """

    runtime: str = "onnx"
    model_file: str = "model.onnx"
    labels: tuple[str, ...] | None = None
    memory_hint_bytes: int | None = None
    sha256: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    preprocess: TextPreprocess | None = None
    postprocess: TopKPostprocess | None = None
    base: SharedBase | None = None
    ort_format: OrtFormat | None = None

    @property
    def runs_published_ort(self) -> bool:
        """Whether the onnx runtime runs the published ORT-format file (a model of its own,
        not a head on a shared base), reading ``model_file`` only to convert it or when that
        file cannot serve: then the runtime, not the store, checks ``model_file``'s digest."""
        return self.ort_format is not None and self.runtime == "onnx" and self.base is None


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A resident (or loading) model as the cache sees it."""

    model_id: str
    state: str  # "loading" | "ready"
    nbytes: int
    pinned: bool
    in_flight: int
    hits: int
    last_used_s: float
    load_seconds: float
    note: str = ""  # how it loaded when not the fast way, and why ("" when it did)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What a model takes and returns, for OIP metadata and SageMaker ``GET /models/{m}``."""

    model_id: str
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...] | None = None
