"""Closed-form tenant heads: the ridge solution, a fitted temperature, one head per tenant."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.linear_model import Ridge

from tenantserve.tools.fleet import heads, minilm

DIM = 24


def _tenant(
    seed: int, labels: int = 5, rows: int = 30, noise: float = 0.8
) -> tuple[npt.NDArray[np.float32], list[str]]:
    """Unit-norm points around one centre per label, like sentence embeddings of intents."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((labels, DIM))
    y = np.repeat(np.arange(labels), rows)
    x = centres[y] + noise * rng.standard_normal((len(y), DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"intent-{i:02d}" for i in y]


def _log_loss(
    weights: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.intp],
) -> float:
    logits = x.astype(np.float64) @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(len(y)), y]))


def test_ridge_head_is_sklearns_ridge_scaled_and_predicts_the_same() -> None:
    x, labels = _tenant(seed=1)
    weights, bias, names = heads.fit_ridge_head(x, labels)

    onehot = np.asarray([[label == name for name in names] for label in labels], np.float64)
    reference = Ridge(alpha=heads.RIDGE).fit(x.astype(np.float64), onehot)
    scale = float(np.linalg.norm(weights) / np.linalg.norm(reference.coef_))
    np.testing.assert_allclose(weights, reference.coef_.T * scale, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, reference.intercept_ * scale, rtol=1e-4, atol=1e-5)
    probe, _ = _tenant(seed=2)
    head = minilm.Head(weights, bias, names)
    expected = np.asarray(names)[reference.predict(probe.astype(np.float64)).argmax(axis=1)]
    assert list(np.asarray(names)[head.probabilities(probe).argmax(axis=1)]) == list(expected)
    assert names == tuple(sorted(set(labels)))


def test_the_temperature_minimises_the_training_log_loss() -> None:
    # Overlapping labels: on separable rows the loss falls for ever and the search's bound wins.
    x, labels = _tenant(seed=3, noise=3.0)
    weights, bias, names = heads.fit_ridge_head(x, labels)
    y = np.asarray([names.index(label) for label in labels], dtype=np.intp)

    best = _log_loss(weights, bias, x, y)
    for factor in (0.9, 1.1):
        assert best < _log_loss(weights * factor, bias * factor, x, y)


def test_each_tenant_gets_its_own_head_from_its_own_rows() -> None:
    first = heads.fit_ridge_head(*_tenant(seed=4))
    other_rows = heads.fit_ridge_head(*_tenant(seed=5))
    x, labels = _tenant(seed=4)
    fewer_labels = heads.fit_ridge_head(x[: 4 * 30], labels[: 4 * 30])

    assert not np.allclose(first[0], other_rows[0])
    assert fewer_labels[2] == first[2][:4]
    assert fewer_labels[0].shape == (DIM, 4)
    again = heads.fit_ridge_head(*_tenant(seed=4))
    np.testing.assert_array_equal(first[0], again[0])  # deterministic: same rows, same head


def test_fit_head_dispatches_and_names_bad_input() -> None:
    x, labels = _tenant(seed=6, labels=3)
    ridge = minilm.fit_head(x, labels, seed=0, head="ridge")
    assert ridge.weights.shape == (DIM, 3)
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        minilm.fit_head(x, labels, seed=0, head="svm")
    with pytest.raises(ValueError, match="two or more labels"):
        heads.fit_ridge_head(x[:5], ["only"] * 5)
    with pytest.raises(ValueError, match="90 embeddings but 3 labels"):
        heads.fit_ridge_head(x, labels[:3])
