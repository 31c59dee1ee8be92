"""Deterministic synthetic ONNX models of a chosen size, written as store artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tenantserve.runtimes.ort_format import ORT_FILE, ORT_VERSION, NoFastLoad, convert
from tenantserve.tools.fleet.publish import swap_into_place

# ONNX Runtime 1.31 loads opset 21; 17 is old enough for any runtime we meet.
OPSET = 17
IR_VERSION = 8
DEFAULT_N_OUTPUTS = 4
_MIN_HIDDEN = 1


def write_synthetic_model(
    dest: Path,
    *,
    size_bytes: int,
    seed: int,
    n_features: int = 16,
    n_outputs: int = DEFAULT_N_OUTPUTS,
) -> Path:
    """Write a numeric model folder (``model.onnx``, its ORT-format copy ``model.ort`` and
    ``model.json``) at ``dest``; return ``dest``.

    The graph is ``output = tanh(input @ W1) @ W2`` with ``input`` FP32 ``[-1, n_features]`` and
    ``output`` FP32 ``[-1, n_outputs]``. The hidden width is chosen so the two weights hold about
    ``size_bytes``; the weights are random (incompressible) and fixed by ``seed``, so the same
    arguments always give the same bytes. The folder appears atomically: it is written under a
    temporary name beside ``dest`` and renamed into place (replacing an older one).
    """
    if size_bytes <= 0 or n_features <= 0 or n_outputs <= 0:
        raise ValueError("size_bytes, n_features and n_outputs must be positive")
    model_bytes = synthetic_model_bytes(
        size_bytes=size_bytes, seed=seed, n_features=n_features, n_outputs=n_outputs
    )
    manifest: dict[str, Any] = {
        "runtime": "onnx",
        "model_file": "model.onnx",
        # Measured with onnxruntime 1.31: a session holds the weights plus a pre-packed copy of
        # W1, and the parsed file lingers in glibc until trimmed, so twice the file is honest.
        "memory_hint_bytes": 2 * len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "metadata": {
            "kind": "synthetic",
            "seed": str(seed),
            "size_bytes": str(size_bytes),
            "n_features": str(n_features),
        },
    }
    return write_artifact(dest, model_bytes, manifest)


def synthetic_model_bytes(*, size_bytes: int, seed: int, n_features: int, n_outputs: int) -> bytes:
    """The serialized ONNX model that :func:`write_synthetic_model` writes."""
    from onnx import TensorProto, helper, numpy_helper

    hidden = max(_MIN_HIDDEN, size_bytes // (4 * (n_features + n_outputs)))
    rng = np.random.default_rng(seed)
    # Scaled so activations stay O(1) whatever the width: outputs are finite and comparable.
    w1 = (rng.standard_normal((n_features, hidden), dtype=np.float32) / np.sqrt(n_features)).astype(
        np.float32
    )
    w2 = (rng.standard_normal((hidden, n_outputs), dtype=np.float32) / np.sqrt(hidden)).astype(
        np.float32
    )
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["input", "w1"], ["h"]),
            helper.make_node("Tanh", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w2"], ["output"]),
        ],
        name=f"synthetic_{seed}",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, [-1, n_features])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, [-1, n_outputs])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tenantserve.tools.fleet.synth",
        ir_version=IR_VERSION,
    )
    data: bytes = model.SerializeToString()
    return data


def write_fleet(
    store: Path, *, models: int, size_bytes: int, seed: int, tenants: int | None = None
) -> list[str]:
    """Write ``models`` synthetic models into ``store``; return their ids, in order.

    Model ``i`` is ``tenant-{i % tenants:03d}/model-{i:04d}``; with ``tenants=None`` every model
    has its own tenant. Each model's seed derives from ``(seed, i)``, so fleets are reproducible.
    """
    if models < 0 or (tenants is not None and tenants <= 0):
        raise ValueError("models must be >= 0 and tenants > 0")
    ids: list[str] = []
    for i in range(models):
        tenant = i if tenants is None else i % tenants
        model_id = f"tenant-{tenant:03d}/model-{i:04d}"
        model_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        write_synthetic_model(store / model_id, size_bytes=size_bytes, seed=model_seed)
        ids.append(model_id)
    return ids


def write_artifact(dest: Path, model_bytes: bytes, manifest: dict[str, Any]) -> Path:
    """Write ``model.onnx``, its ORT-format copy ``model.ort`` (named in the manifest's
    ``ort_format``; left out for a model ONNX Runtime cannot convert) and ``model.json`` into
    a fresh folder renamed onto ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A leading dot keeps the temporary name outside the model-id grammar, so no store lists it.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a store folder is read by other users too
        (tmp / "model.onnx").write_bytes(model_bytes)
        names = ["model.onnx", "model.json"]
        ort_format = add_ort_format(tmp, model_bytes)
        if ort_format is not None:
            manifest = {**manifest, "ort_format": ort_format}
            names.append(ORT_FILE)
        (tmp / "model.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        for name in names:
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def add_ort_format(folder: Path, model_bytes: bytes) -> dict[str, str] | None:
    """Write ``model_bytes`` (ONNX) converted to ORT format as ``folder / model.ort``, and
    return the manifest's ``ort_format`` entry for it: a server on the same ONNX Runtime maps
    it without converting. ``None`` (nothing written) when ONNX Runtime cannot convert it."""
    try:
        convert(model_bytes, folder / ORT_FILE)
    except NoFastLoad:
        (folder / ORT_FILE).unlink(missing_ok=True)
        return None
    digest = hashlib.sha256((folder / ORT_FILE).read_bytes()).hexdigest()
    return {"model_file": ORT_FILE, "sha256": digest, "onnxruntime": ORT_VERSION}
