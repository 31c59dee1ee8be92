"""Closed-form per-tenant heads: ridge regression onto one-hot labels, softmax-scaled.

``LogisticRegression`` spends ~3-4 s per tenant in L-BFGS (hundreds of iterations over a
[rows, 384] x [384, labels] product); warm-starting it from a fleet-wide fit barely helped on
this data. A least-squares head is one 384 x 384 solve (~40 ms): on Banking77 its held-out
accuracy is within a point of logistic regression's (benchmarks/RESULTS.md, issue 18). Its
scores are turned into probabilities by one temperature, fitted per tenant on its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
# Ridge strength on unit-norm 384-d embeddings: 0.03-0.1 scored best on Banking77 tenants.
RIDGE = 0.05
# Bounds of the softmax temperature search (scores of a least-squares head are ~[0, 1]).
_TEMPERATURE = (1.0, 200.0)
_SEARCH_STEPS = 24  # shrinks the 199-wide bracket by 0.618^24, to ~2e-3


def fit_ridge_head(
    embeddings: Floats, labels: Sequence[str], *, ridge: float = RIDGE
) -> tuple[Floats, Floats, tuple[str, ...]]:
    """``(weights [dim, labels], bias [labels], sorted labels)`` with
    ``softmax(x @ weights + bias)`` the tenant's probabilities.

    Raises:
        ValueError: fewer than two labels, or not one label per row.
    """
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    names = tuple(sorted(set(labels)))
    if len(names) < 2:
        raise ValueError(f"a head needs two or more labels (got {len(names)})")
    index = {label: i for i, label in enumerate(names)}
    y = np.fromiter((index[label] for label in labels), dtype=np.intp, count=len(labels))
    x = np.asarray(embeddings, dtype=np.float64)
    onehot = np.zeros((len(y), len(names)))
    onehot[np.arange(len(y)), y] = 1.0
    # Centred, so the bias is not shrunk: the solution of min |Xc W - Yc|² + ridge |W|².
    x_mean, y_mean = x.mean(axis=0), onehot.mean(axis=0)
    centred = x - x_mean
    gram = centred.T @ centred
    gram[np.diag_indices_from(gram)] += ridge
    weights = np.linalg.solve(gram, centred.T @ (onehot - y_mean))
    bias = y_mean - x_mean @ weights
    scale = _temperature(x @ weights + bias, y)
    return (
        np.ascontiguousarray(weights * scale, dtype=np.float32),
        (bias * scale).astype(np.float32),
        names,
    )


def _temperature(scores: npt.NDArray[np.float64], y: npt.NDArray[np.intp]) -> float:
    """The scale of ``scores`` that minimises the log loss of the training rows."""
    rows = np.arange(len(y))

    def log_loss(scale: float) -> float:
        logits = scores * scale
        logits -= logits.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[rows, y]))

    # The loss is convex in the scale: a golden-section search finds its minimum, one new
    # evaluation per step.
    low, high = _TEMPERATURE
    ratio = (np.sqrt(5.0) - 1) / 2
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = log_loss(left), log_loss(right)
    for _ in range(_SEARCH_STEPS):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = log_loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = log_loss(right)
    return (low + high) / 2
