"""Per-tenant TF-IDF intent classifiers built from Banking77 and exported to ONNX."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tenantserve.tools.fleet.datasets import data_file_exists, read_data_text
from tenantserve.tools.fleet.synth import write_artifact

MIN_INTENTS = 10
MAX_INTENTS = 40
ROWS_PER_INTENT = 80
MODEL_NAME = "macros"
INPUT_NAME = "text"
OPSET = 17
# Names for simulated tenants; the index prefix keeps them unique when the list wraps.
_COMPANIES = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell",
    "cyberdyne", "soylent", "aperture", "oscorp", "vandelay", "gringotts", "monarch", "dunder",
    "pied-piper", "nakatomi", "massive", "cogswell", "spacely", "zorg", "virtucon",
)  # fmt: skip


class Example(NamedTuple):
    """One labelled support ticket."""

    text: str
    intent: str


class TenantModel(NamedTuple):
    """A converted classifier: ONNX bytes, class names in probability-column order, accuracy."""

    onnx_bytes: bytes
    labels: tuple[str, ...]
    holdout_accuracy: float


@dataclass(frozen=True, slots=True)
class TenantReport:
    """What :func:`build_text_fleet` built for one tenant."""

    tenant: str
    model_id: str
    intents: int
    train_rows: int
    holdout_rows: int
    holdout_accuracy: float
    model_bytes: int
    build_seconds: float


class ConversionMismatch(RuntimeError):
    """The ONNX model and the scikit-learn model disagree on a held-out text."""


def load_banking77(path: Path) -> list[Example]:
    """Read a Banking77 CSV (``text,category``), or its ``.gz`` where only that exists; the csv
    module keeps quoted newlines intact."""
    rows = csv.DictReader(io.StringIO(read_data_text(path), newline=""))
    return [Example(row["text"], row["category"]) for row in rows]


def build_tenant_tfidf(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    seed: int,
    holdout_texts: Sequence[str] | None = None,
    holdout_labels: Sequence[str] | None = None,
) -> TenantModel:
    """Fit TF-IDF + logistic regression, convert it to ONNX and check the two agree.

    The ONNX model takes ``text`` (string ``[N, 1]``) and returns ``label`` (string ``[N]``) and
    ``probabilities`` (float ``[N, classes]``, columns in ``TenantModel.labels`` order). Without
    a holdout, 20% of the rows (stratified by ``seed``) are held out.

    Raises:
        ConversionMismatch: ONNX Runtime predicts a different label than scikit-learn.
    """
    from sklearn.model_selection import train_test_split

    if holdout_texts is None or holdout_labels is None:
        texts, holdout_texts, labels, holdout_labels = train_test_split(
            list(texts), list(labels), test_size=0.2, random_state=seed, stratify=list(labels)
        )
    pipeline = fit_tfidf_pipeline(texts, labels)
    onnx_bytes = pipeline_to_onnx(pipeline)
    expected = np.asarray(pipeline.predict(list(holdout_texts)))
    got = _onnx_labels(onnx_bytes, holdout_texts)
    if not np.array_equal(got, expected):
        wrong = int(np.sum(got != expected))
        raise ConversionMismatch(f"ONNX and scikit-learn disagree on {wrong} held-out texts")
    accuracy = float(np.mean(expected == np.asarray(holdout_labels)))
    classes = tuple(str(c) for c in pipeline.classes_)
    return TenantModel(onnx_bytes, classes, accuracy)


def fit_tfidf_pipeline(texts: Sequence[str], labels: Sequence[str]) -> Any:
    """A fitted scikit-learn ``Pipeline`` of TF-IDF (words and word pairs) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    # token_pattern \w+ is what ONNX Runtime's tokenizer reproduces exactly; sublinear_tf is
    # left off because its ONNX form shifts probabilities by a few percent. min_df=2 and
    # tol=1e-3 halve the fit time (pairs seen once carry little) at the same accuracy.
    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(token_pattern=r"\w+", ngram_range=(1, 2), min_df=2)),
            ("clf", LogisticRegression(C=10.0, tol=1e-3, max_iter=1000)),
        ]
    )
    pipeline.fit(list(texts), list(labels))
    return pipeline


def pipeline_to_onnx(pipeline: Any) -> bytes:
    """Convert a fitted :func:`fit_tfidf_pipeline` result; input ``text`` string ``[N, 1]``."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    model = to_onnx(
        pipeline,
        initial_types=[(INPUT_NAME, StringTensorType([None, 1]))],
        # This image has no en_US.UTF-8; without C.UTF-8 the StringNormalizer fails to load.
        options={TfidfVectorizer: {"locale": "C.UTF-8"}, LogisticRegression: {"zipmap": False}},
        target_opset=OPSET,
    )
    data: bytes = model.SerializeToString()
    return data


def _onnx_labels(onnx_bytes: bytes, texts: Sequence[str]) -> np.ndarray[Any, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    batch = np.array(list(texts), dtype=object).reshape(-1, 1)
    label, _probabilities = session.run(["label", "probabilities"], {INPUT_NAME: batch})
    return np.asarray(label)


def tenant_names(count: int, *, seed: int) -> list[str]:
    """Deterministic tenant names such as ``t000-acme`` (valid model-id segments)."""
    words = list(_COMPANIES)
    random.Random(seed).shuffle(words)
    return [f"t{i:03d}-{words[i % len(words)]}" for i in range(count)]


def find_banking77(dataset_dir: Path) -> Path:
    """The Banking77 folder: ``dataset_dir`` itself or its ``banking77`` child."""
    for candidate in (dataset_dir, dataset_dir / "banking77"):
        if data_file_exists(candidate / "train.csv") and data_file_exists(candidate / "test.csv"):
            return candidate
    raise FileNotFoundError(f"no banking77 train.csv/test.csv under {dataset_dir}")


def build_text_fleet(
    dataset_dir: Path, store: Path, *, tenants: int, seed: int, progress: bool = False
) -> list[TenantReport]:
    """Build one ``<tenant>/macros`` classifier per tenant into ``store``.

    Each tenant gets a random set of 10-40 Banking77 intents (its macros), up to
    ``ROWS_PER_INTENT`` training rows of each, and is scored on every test row of those intents.
    """
    folder = find_banking77(dataset_dir)
    train = load_banking77(folder / "train.csv")
    test = load_banking77(folder / "test.csv")
    intents = sorted({row.intent for row in train})
    names = tenant_names(tenants, seed=seed)
    rng = random.Random(seed)
    plans = [
        (name, sorted(rng.sample(intents, _intent_count(rng, len(intents))))) for name in names
    ]

    reports: list[TenantReport] = []
    if not progress:
        for index, (name, chosen) in enumerate(plans):
            reports.append(_build_one(name, chosen, train, test, store, seed=seed + index))
        return reports

    from rich.progress import Progress

    with Progress() as bar:
        task = bar.add_task("building tenant classifiers", total=len(plans))
        for index, (name, chosen) in enumerate(plans):
            reports.append(_build_one(name, chosen, train, test, store, seed=seed + index))
            bar.update(task, advance=1, description=f"built {name}")
    return reports


def _intent_count(rng: random.Random, available: int) -> int:
    return min(available, rng.randint(MIN_INTENTS, MAX_INTENTS))


def _build_one(
    tenant: str,
    intents: Sequence[str],
    train: Sequence[Example],
    test: Sequence[Example],
    store: Path,
    *,
    seed: int,
) -> TenantReport:
    started = time.perf_counter()
    rng = random.Random(seed)
    chosen = set(intents)
    by_intent: dict[str, list[str]] = {intent: [] for intent in intents}
    for row in train:
        if row.intent in chosen:
            by_intent[row.intent].append(row.text)
    texts: list[str] = []
    labels: list[str] = []
    for intent in intents:
        rows = by_intent[intent]
        sample = rng.sample(rows, min(ROWS_PER_INTENT, len(rows)))
        texts.extend(sample)
        labels.extend([intent] * len(sample))
    holdout = [row for row in test if row.intent in chosen]
    built = build_tenant_tfidf(
        texts,
        labels,
        seed=seed,
        holdout_texts=[row.text for row in holdout],
        holdout_labels=[row.intent for row in holdout],
    )
    model_id = f"{tenant}/{MODEL_NAME}"
    manifest: dict[str, Any] = {
        "runtime": "onnx",
        "model_file": "model.onnx",
        "labels": list(built.labels),
        # Seen in the server: each further tenant session grows RSS by about 3x its file.
        "memory_hint_bytes": 4 * len(built.onnx_bytes),
        "sha256": hashlib.sha256(built.onnx_bytes).hexdigest(),
        "metadata": {
            "kind": "tfidf-logreg",
            "dataset": "banking77",
            "input": INPUT_NAME,
            "intents": str(len(intents)),
            "train_rows": str(len(texts)),
            "holdout_rows": str(len(holdout)),
            "holdout_accuracy": f"{built.holdout_accuracy:.4f}",
        },
    }
    write_artifact(store / model_id, built.onnx_bytes, manifest)
    return TenantReport(
        tenant=tenant,
        model_id=model_id,
        intents=len(intents),
        train_rows=len(texts),
        holdout_rows=len(holdout),
        holdout_accuracy=built.holdout_accuracy,
        model_bytes=len(built.onnx_bytes),
        build_seconds=time.perf_counter() - started,
    )
