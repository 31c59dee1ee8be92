"""Keras 3 files: checked as data before Keras loads them, then written layer by layer as
ONNX; every converted layer and activation predicts what Keras predicts."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

os.environ["KERAS_BACKEND"] = "torch"

import keras
import numpy as np
import pytest

from tenantserve.convert.keras_archive import chain, checked_copy
from tenantserve.convert.keras_model import CONVERTER
from tenantserve.convert.run import convert_artifact
from tenantserve.errors import LoadFailed

layers = keras.layers


def _save(model: Any, folder: Path) -> Path:
    keras.utils.set_random_seed(0)
    path = folder / "keras.keras"
    model.save(path)
    return path


def _sequential(*body: Any, features: int = 5) -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((features,)), *body])


ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "elu", "selu", "softplus", "softsign",
               "gelu", "silu", "relu6", "leaky_relu", "exponential", "hard_sigmoid"]  # fmt: skip


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_predicts_what_keras_predicts(tmp_path: Path, activation: str) -> None:
    model = _sequential(layers.Dense(6, activation=activation), layers.Dense(1))
    _save(model, tmp_path)
    rows = np.random.default_rng(0).normal(0.0, 2.0, (200, 5)).astype(np.float32)
    np.save(tmp_path / "sample.npy", rows)
    conversion = convert_artifact(tmp_path, "keras.keras")
    assert (conversion.kind, conversion.rows) == ("regressor", "sample.npy")
    assert conversion.max_difference < 1e-4


def test_every_converted_layer_predicts_what_keras_predicts(tmp_path: Path) -> None:
    rows = np.random.default_rng(1).normal(2.0, 3.0, (64, 5)).astype(np.float32)
    norm = layers.Normalization()
    norm.adapt(rows)
    model = _sequential(
        norm, layers.Rescaling(0.5, offset=0.1), layers.Dense(8), layers.ReLU(max_value=4.0),
        layers.Dense(8, use_bias=False), layers.LeakyReLU(negative_slope=0.3), layers.ELU(),
        layers.BatchNormalization(center=False), layers.Dropout(0.5), layers.GaussianNoise(1.0),
        layers.LayerNormalization(), layers.Flatten(), layers.Dense(4), layers.Softmax(),
    )  # fmt: skip
    model.layers[7].moving_variance.assign(np.linspace(0.5, 2.0, 8))  # not the defaults
    np.save(tmp_path / "sample.npy", rows)
    _save(model, tmp_path)
    conversion = convert_artifact(tmp_path, "keras.keras")
    assert (conversion.kind, conversion.n_features, conversion.rows) == (
        "classifier", 5, "sample.npy"
    )  # fmt: skip
    assert conversion.max_difference < 1e-5


def test_logits_get_a_softmax_and_a_sigmoid_makes_two_classes(tmp_path: Path) -> None:
    _save(_sequential(layers.Dense(3)), tmp_path)
    original = CONVERTER.open(tmp_path / "keras.keras")
    probabilities = original.predict(np.ones((2, 5), np.float32))["probabilities"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    _save(_sequential(layers.Dense(1, activation="sigmoid")), tmp_path)
    binary = CONVERTER.open(tmp_path / "keras.keras")
    assert binary.kind == "classifier"
    assert binary.predict(np.ones((2, 5), np.float32))["probabilities"].shape == (2, 2)


def _config(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        config: dict[str, Any] = json.loads(archive.read("config.json"))
    return config


def test_a_custom_object_or_lambda_is_refused_by_name(tmp_path: Path) -> None:
    config = _config(_save(_sequential(layers.Dense(2)), tmp_path))
    custom = json.loads(json.dumps(config))
    custom["config"]["layers"][1]["module"] = "mypackage.layers"
    with pytest.raises(LoadFailed, match=r"names mypackage.layers.Dense: only Keras's own"):
        chain(custom)
    lambda_layer = json.loads(json.dumps(config))
    lambda_layer["config"]["layers"][1]["class_name"] = "Lambda"
    with pytest.raises(LoadFailed, match=r"uses a Lambda layer; converted are: "):
        chain(lambda_layer)
    initializer = json.loads(json.dumps(config))
    initializer["config"]["layers"][1]["config"]["kernel_initializer"]["module"] = "os"
    with pytest.raises(LoadFailed, match=r"names os.GlorotUniform"):
        chain(initializer)


def test_a_branching_model_is_refused(tmp_path: Path) -> None:
    inputs = keras.Input((4,))
    merged = layers.Add()([layers.Dense(3)(inputs), layers.Dense(3)(inputs)])
    _save(keras.Model(inputs, merged), tmp_path)
    with pytest.raises(LoadFailed, match=r"uses a Add layer|does not follow"):
        CONVERTER.open(tmp_path / "keras.keras")
    skip = keras.Input((4,))
    hidden = layers.Dense(4)(skip)
    _save(keras.Model(skip, layers.Dense(2)(layers.Dense(4)(skip) + hidden)), tmp_path)
    with pytest.raises(LoadFailed, match=r"Keras's own|does not follow|converted are"):
        CONVERTER.open(tmp_path / "keras.keras")


def test_only_keras_entries_reach_keras(tmp_path: Path) -> None:
    path = _save(_sequential(layers.Dense(2)), tmp_path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("assets/evil.py", "raise SystemExit")
    copy, order = checked_copy(path, tmp_path / "..")
    with zipfile.ZipFile(copy) as archive:
        assert sorted(archive.namelist()) == ["config.json", "metadata.json", "model.weights.h5"]
    assert order[-1].startswith("dense")
    (tmp_path / "keras.keras").write_bytes(b"PK not really")
    with pytest.raises(LoadFailed, match=r"not a Keras 3 file"):
        CONVERTER.open(tmp_path / "keras.keras")
