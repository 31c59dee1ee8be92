"""Banking77 tenant classifiers: ONNX agrees with scikit-learn, and tenants classify well."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from fixtures.models import TextStore, find_datasets
from tenantserve.tools.fleet.text import (
    Example,
    build_tenant_tfidf,
    build_text_fleet,
    find_banking77,
    fit_tfidf_pipeline,
    load_banking77,
    pipeline_to_onnx,
    tenant_names,
)
from tenantserve.types import ModelId


@pytest.fixture(scope="module")
def banking77() -> Path:
    return find_datasets() / "banking77"


def _session(data: bytes | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, texts: list[str]) -> tuple[Any, Any]:
    batch = np.array(texts, dtype=object).reshape(-1, 1)
    label, probabilities = session.run(["label", "probabilities"], {"text": batch})
    return label, probabilities


def _subset(rows: list[Example], intents: set[str]) -> tuple[list[str], list[str]]:
    chosen = [r for r in rows if r.intent in intents]
    return [r.text for r in chosen], [r.intent for r in chosen]


def test_load_banking77_keeps_quoted_newlines(banking77: Path) -> None:
    train = load_banking77(banking77 / "train.csv")
    test = load_banking77(banking77 / "test.csv")

    assert (len(train), len(test)) == (10_003, 3_080)
    assert len({r.intent for r in train}) == 77
    assert any("\n" in r.text for r in train + test)
    assert train[0] == Example("I am still waiting on my card?", "card_arrival")


def test_onnx_predictions_equal_sklearn(banking77: Path) -> None:
    train = load_banking77(banking77 / "train.csv")
    test = load_banking77(banking77 / "test.csv")
    intents = set(random.Random(1).sample(sorted({r.intent for r in train}), 12))
    texts, labels = _subset(train, intents)
    held_texts, _ = _subset(test, intents)

    pipeline = fit_tfidf_pipeline(texts, labels)
    onnx_label, onnx_proba = _run(_session(pipeline_to_onnx(pipeline)), held_texts)

    assert list(onnx_label) == list(pipeline.predict(held_texts))
    np.testing.assert_allclose(onnx_proba, pipeline.predict_proba(held_texts), atol=1e-5)


def test_build_tenant_tfidf_holds_out_when_not_given(banking77: Path) -> None:
    train = load_banking77(banking77 / "train.csv")
    intents = {"card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"}
    texts, labels = _subset(train, intents)

    built = build_tenant_tfidf(texts, labels, seed=0)

    assert built.labels == tuple(sorted(intents))
    assert 0.85 <= built.holdout_accuracy <= 1.0
    (label,), (proba,) = _run(_session(built.onnx_bytes), ["my card has not arrived yet"])
    assert label == "card_arrival"
    assert built.labels[int(np.argmax(proba))] == label


def test_text_tenants_classify_their_holdout(text_store: TextStore, banking77: Path) -> None:
    test = load_banking77(banking77 / "test.csv")
    accuracies = []
    for report in text_store.reports:
        folder = text_store.root / report.model_id
        manifest = json.loads((folder / "model.json").read_text())
        labels = manifest["labels"]
        assert 10 <= len(labels) <= 40
        held_texts, held_labels = _subset(test, set(labels))
        onnx_label, onnx_proba = _run(_session(str(folder / "model.onnx")), held_texts)

        assert onnx_proba.shape == (len(held_texts), len(labels))
        # model.json labels name the probability columns, as the server reports them.
        assert [labels[i] for i in np.argmax(onnx_proba, axis=1)] == list(onnx_label)
        accuracy = float(np.mean(onnx_label == np.array(held_labels)))
        assert accuracy == pytest.approx(report.holdout_accuracy)
        assert manifest["metadata"]["holdout_accuracy"] == f"{accuracy:.4f}"
        accuracies.append(accuracy)

    assert len(accuracies) == 3
    assert float(np.mean(accuracies)) >= 0.85


def test_text_store_ids_are_valid_and_tenants_distinct(text_store: TextStore) -> None:
    ids = [ModelId.parse(i) for i in text_store.model_ids]
    assert all(str(i).endswith("/macros") for i in ids)
    assert len({i.tenant for i in ids}) == len(ids)


def test_tenant_names_are_deterministic_and_valid() -> None:
    names = tenant_names(30, seed=4)

    assert names == tenant_names(30, seed=4)
    assert names != tenant_names(30, seed=5)
    assert len(set(names)) == 30
    assert all(re.fullmatch(r"t\d{3}-[a-z-]+", n) for n in names)


def test_build_text_fleet_is_reproducible(banking77: Path, tmp_path: Path) -> None:
    first = build_text_fleet(banking77, tmp_path / "a", tenants=1, seed=11, progress=True)
    again = build_text_fleet(banking77.parent, tmp_path / "b", tenants=1, seed=11)

    assert [r.model_id for r in first] == [r.model_id for r in again]
    labels = [
        json.loads((tmp_path / d / first[0].model_id / "model.json").read_text())["labels"]
        for d in ("a", "b")
    ]
    assert labels[0] == labels[1]
    assert first[0].holdout_accuracy == again[0].holdout_accuracy
    assert sorted(p.name for p in (tmp_path / "a" / first[0].tenant).iterdir()) == ["macros"]


def test_find_banking77_names_the_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="banking77"):
        find_banking77(tmp_path)
