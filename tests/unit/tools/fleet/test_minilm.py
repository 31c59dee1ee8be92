"""MiniLM tenants: one self-contained ONNX graph per tenant that equals the numpy head."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression
from tokenizers import Tokenizer

from fixtures.models import find_datasets
from tenantserve.tools.fleet import minilm
from tenantserve.tools.fleet.build import TenantBuild, build_fleet
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.sources import TenantPlan
from tenantserve.tools.fleet.text import Example, load_banking77

INTENTS_PER_TENANT = 10
TRAIN_PER_INTENT = 40


@dataclass(frozen=True)
class Banking:
    train: list[Example]
    test: list[Example]
    intents: list[str]


@pytest.fixture(scope="module")
def banking() -> Banking:
    datasets = find_datasets()
    train = load_banking77(datasets / "banking77" / "train.csv")
    test = load_banking77(datasets / "banking77" / "test.csv")
    return Banking(train, test, sorted({r.intent for r in train}))


@pytest.fixture(scope="module")
def encoder() -> minilm.Encoder:
    return minilm.Encoder.open()


@pytest.fixture(scope="module")
def encoder_model() -> Any:
    return onnx.load(str(minilm.encoder_path()))


def _plan(banking: Banking, tenant: str, intents: list[str]) -> TenantPlan:
    train = [
        row
        for intent in intents
        for row in [r for r in banking.train if r.intent == intent][:TRAIN_PER_INTENT]
    ]
    holdout = [r for r in banking.test if r.intent in set(intents)]
    return TenantPlan(tenant, "banking77", tuple(intents), tuple(train), tuple(holdout))


@pytest.fixture(scope="module")
def fleet(
    banking: Banking, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[TenantPlan], list[TenantBuild]]:
    drawn = random.Random(3).sample(banking.intents, 2 * INTENTS_PER_TENANT)
    plans = [
        _plan(banking, "acme", sorted(drawn[:INTENTS_PER_TENANT])),
        _plan(banking, "globex", sorted(drawn[INTENTS_PER_TENANT:])),
    ]
    store = tmp_path_factory.mktemp("minilm-store")
    built = build_fleet(plans, kind="minilm", publisher=open_publisher(str(store)), seed=0)
    return store, plans, built


def _artifact_sessions(folder: Path) -> tuple[ort.InferenceSession, ort.InferenceSession, Any]:
    manifest = json.loads((folder / "model.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / manifest["preprocess"]["tokenizer_file"]))
    tokenizer.enable_truncation(manifest["preprocess"]["max_length"])
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(folder / name), options, providers=["CPUExecutionProvider"])

    return session(manifest["base"]["model_file"]), session("model.onnx"), tokenizer


def _run_batched(
    encoder: ort.InferenceSession, head: ort.InferenceSession, tokenizer: Any, texts: list[str]
) -> Any:
    # Batches of similar length: one batch of all texts would pad each to the longest.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), head.get_outputs()[0].shape[1]), dtype=np.float32)
    hidden_name = encoder.get_outputs()[0].name
    for start in range(0, len(order), 64):
        rows = order[start : start + 64]
        tokens = minilm.encode(tokenizer, [texts[i] for i in rows])
        (hidden,) = encoder.run(None, tokens)
        feed = {hidden_name: hidden, "attention_mask": tokens["attention_mask"]}
        (out[rows],) = head.run(["probabilities"], feed)
    return out


@pytest.mark.slow
def test_minilm_tenants_classify_well_from_their_artifact_alone(
    fleet: tuple[Path, list[TenantPlan], list[TenantBuild]],
) -> None:
    store, plans, built = fleet
    accuracies = []
    for plan, report in zip(plans, built, strict=True):
        folder = store / plan.model_id
        manifest = json.loads((folder / "model.json").read_text())
        model = (folder / "model.onnx").read_bytes()
        encoder = (folder / "encoder.onnx").read_bytes()
        assert sorted(p.name for p in folder.iterdir()) == [
            "encoder.onnx", "model.json", "model.onnx", "model.ort", "tokenizer.json"
        ]  # fmt: skip
        # Self-contained (~23 MB with the encoder), and the encoder is declared as a shared
        # base by digest, so the server holds it once for every tenant.
        assert 20_000_000 < sum(p.stat().st_size for p in folder.iterdir()) < 26_000_000
        assert len(model) < 1_000_000
        assert manifest["sha256"] == hashlib.sha256(model).hexdigest()
        assert manifest["base"] == {
            "model_file": "encoder.onnx", "sha256": hashlib.sha256(encoder).hexdigest()
        }  # fmt: skip
        assert manifest["labels"] == list(plan.macros)
        assert manifest["preprocess"] == {
            "tokenizer_file": "tokenizer.json", "max_length": 128, "text_input": "text"
        }  # fmt: skip
        assert manifest["postprocess"] == {"top_k": 5, "scores_output": "probabilities"}
        assert manifest["memory_hint_bytes"] > 3 * len(model)

        encoder_session, head, tokenizer = _artifact_sessions(folder)
        assert [(i.name, i.type) for i in encoder_session.get_inputs()] == [
            (name, "tensor(int64)") for name in minilm.TOKEN_INPUTS
        ]
        (output,) = head.get_outputs()
        assert (output.name, output.shape[1]) == ("probabilities", len(plan.macros))
        texts = [r.text for r in plan.holdout]
        probabilities = _run_batched(encoder_session, head, tokenizer, texts)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        predicted = np.asarray(manifest["labels"])[probabilities.argmax(axis=1)]
        accuracy = float(np.mean(predicted == np.asarray([r.intent for r in plan.holdout])))
        # The artifact on its own reproduces what the builder measured with the numpy head.
        assert accuracy == pytest.approx(report.holdout_accuracy, abs=1.5 / len(texts))
        accuracies.append(accuracy)
    assert float(np.mean(accuracies)) >= 0.90


def test_merged_graph_equals_the_numpy_head(
    banking: Banking, encoder: minilm.Encoder, encoder_model: Any
) -> None:
    plan = _plan(banking, "t", banking.intents[:4])
    train = encoder.embed([r.text for r in plan.train])
    head = minilm.fit_head(train, [r.intent for r in plan.train], seed=0)
    texts = [*[r.text for r in plan.holdout][:48], "", "a" * 2000]  # empty and truncated
    merged = minilm.merge_head(encoder_model, head)

    worst = minilm.verify_merged(merged, head, minilm.load_tokenizer(), texts, encoder.embed(texts))

    assert worst <= minilm.TOLERANCE
    reference = LogisticRegression(C=minilm.HEAD_C, max_iter=2000, random_state=0)
    reference.fit(train, [r.intent for r in plan.train])
    np.testing.assert_allclose(
        head.probabilities(encoder.embed(texts)), reference.predict_proba(encoder.embed(texts)),
        atol=1e-5,
    )  # fmt: skip


def test_two_label_head_matches_sklearn_and_a_wrong_graph_is_refused(
    banking: Banking, encoder: minilm.Encoder, encoder_model: Any
) -> None:
    plan = _plan(banking, "t", ["card_arrival", "exchange_rate"])
    train = encoder.embed([r.text for r in plan.train])
    labels = [r.intent for r in plan.train]
    head = minilm.fit_head(train, labels, seed=0)
    texts = [r.text for r in plan.holdout][:20]
    held = encoder.embed(texts)

    reference = LogisticRegression(C=minilm.HEAD_C, max_iter=2000, random_state=0)
    np.testing.assert_allclose(
        head.probabilities(held), reference.fit(train, labels).predict_proba(held), atol=1e-5
    )
    other = minilm.Head(head.weights, head.bias + np.array([3.0, -3.0], np.float32), head.labels)
    with pytest.raises(minilm.HeadMismatch, match="differs from the numpy head"):
        minilm.verify_merged(
            minilm.merge_head(encoder_model, other), head, minilm.load_tokenizer(), texts, held
        )


def test_each_distinct_text_is_embedded_once(encoder: minilm.Encoder) -> None:
    batches: list[int] = []
    texts = ["card not arrived (once)", "exchange rate? (once)", "card not arrived (once)"]

    first = encoder.embed(texts, on_batch=batches.append)
    again = encoder.embed(texts[::-1], on_batch=batches.append)

    assert batches == [2]
    np.testing.assert_array_equal(first, again[::-1])
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert first.shape == (3, 384)
    assert not np.allclose(first[0], first[1])
