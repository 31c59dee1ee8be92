"""Converted native models load as fast as ONNX ones of the same size (issue #20), one run.

    .venv/bin/python benchmarks/bench_native_loads.py [--repeats 30]

For an XGBoost booster (``xgboost.json``), a LightGBM booster (``lightgbm.txt``), a
scikit-learn random forest (``sklearn.skops``), a PyTorch MLP (``pytorch.pt2``) and a Keras
MLP (``keras.keras``), each trained here on seeded rows: the first
load (conversion and proof included, once per file), then loads from the disk tier,
interleaved with loads of an artifact holding the same model as ``model.onnx`` (made by the
same converter, as a tenant converting it themselves would): ``prepare`` + ``load`` +
``close`` through the server's runtime, medians in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tenantserve.convert.run import convert_artifact
from tenantserve.runtimes import default_runtimes
from tenantserve.store import DiskCache
from tenantserve.store.manifest import read_manifest

N_FEATURES = 32


def _data() -> tuple[np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, N_FEATURES)).astype(np.float32)
    y = (x[:, :4].sum(axis=1) + rng.normal(size=4000) > 0).astype(np.int64)
    return x, y


def _xgboost(folder: Path) -> str:
    import xgboost as xgb

    x, y = _data()
    params = {"objective": "binary:logistic", "max_depth": 6, "nthread": 1}
    xgb.train(params, xgb.DMatrix(x, y), 300).save_model(folder / "xgboost.json")
    return "xgboost.json"


def _lightgbm(folder: Path) -> str:
    import lightgbm as lgb

    x, y = _data()
    params = {"objective": "binary", "num_leaves": 63, "verbose": -1, "num_threads": 1}
    lgb.train(params, lgb.Dataset(x, y), 300).save_model(folder / "lightgbm.txt")
    return "lightgbm.txt"


def _sklearn(folder: Path) -> str:
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    x, y = _data()
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1)
    sio.dump(forest.fit(x, y), folder / "sklearn.skops")
    return "sklearn.skops"


def _pytorch(folder: Path) -> str:
    import torch

    x, y = _data()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
        torch.nn.ReLU(), torch.nn.Linear(512, 2),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        loss.backward()
        optimizer.step()
    batch = torch.export.Dim("batch")
    example = (torch.from_numpy(x[:2]),)
    program = torch.export.export(net.eval(), example, dynamic_shapes=({0: batch},))
    torch.export.save(program, folder / "pytorch.pt2")
    return "pytorch.pt2"


def _keras(folder: Path) -> str:
    import os

    os.environ["KERAS_BACKEND"] = "torch"
    import keras

    x, y = _data()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [keras.Input((N_FEATURES,)), layers.Dense(512, activation="relu"),
         layers.Dense(512, activation="relu"), layers.Dense(2, activation="softmax")]
    )  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    model.save(folder / "keras.keras")
    return "keras.keras"


def _load_ms(runtime: object, folder: Path) -> float:
    manifest = read_manifest(folder)
    start = time.perf_counter()
    runtime.prepare(folder, manifest)  # type: ignore[attr-defined]
    runtime.load(folder, manifest).close()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    makers: dict[str, Callable[[Path], str]] = {
        "XGBoost": _xgboost,
        "LightGBM": _lightgbm,
        "scikit-learn": _sklearn,
        "PyTorch": _pytorch,
        "Keras": _keras,
    }
    print(f"{'model':<14}{'onnx size':>11}{'first load':>12}{'converted':>11}{'onnx':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runtime = default_runtimes(DiskCache(root / "disk", max_bytes=1 << 32))["onnx"]
        runtime.warm_up()
        for name, make in makers.items():
            native, onnx = root / f"{name}-native", root / f"{name}-onnx"
            native.mkdir()
            onnx.mkdir()
            model_file = make(native)
            onnx_bytes = convert_artifact(native, model_file).onnx
            (onnx / "model.onnx").write_bytes(onnx_bytes)
            first = _load_ms(runtime, native)  # converts, proves, keeps
            _load_ms(runtime, onnx)  # its ORT-format file, made once
            converted, plain = [], []
            for _ in range(args.repeats):
                converted.append(_load_ms(runtime, native))
                plain.append(_load_ms(runtime, onnx))
            print(
                f"{name:<14}{len(onnx_bytes) / 1e6:>9.2f}MB{first:>10.0f}ms"
                f"{statistics.median(converted):>9.2f}ms{statistics.median(plain):>7.2f}ms"
            )


if __name__ == "__main__":
    main()
