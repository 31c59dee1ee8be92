"""``fleet synth``: synthetic fleets published to a store, numeric or mixed with native models."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tenantserve.tools.fleet.build import MODEL_FILE, FleetProgress
from tenantserve.tools.fleet.native import MissingFramework, write_native_model
from tenantserve.tools.fleet.publish import Publisher
from tenantserve.tools.fleet.synth import write_synthetic_model

SYNTH_KINDS = ("numeric", "mixed")
# A mixed fleet, model by model: ONNX, then each framework's native file, in turn.
_MIXED = ("onnx", "sklearn", "xgboost", "lightgbm")


def synth_fleet(
    *,
    models: int,
    size_bytes: int,
    seed: int,
    publisher: Publisher,
    progress: FleetProgress | None = None,
    kind: str = "numeric",
) -> list[tuple[str, int, str]]:
    """Write ``models`` synthetic models, as ``synth.write_fleet`` does, and publish them.

    ``kind`` ``mixed``: models 1, 5, 9 … are scikit-learn, 2, 6 … XGBoost, 3, 7 … LightGBM
    native files (``tools/fleet/native.py``; ``size_bytes`` applies to the ONNX ones only).
    Returns each model id with its model file's size in bytes and what it is.

    Raises:
        MissingFramework: ``mixed`` without a framework's extra (before anything is written).
    """
    if kind not in SYNTH_KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(SYNTH_KINDS)}")
    plan = [_MIXED[index % len(_MIXED)] if kind == "mixed" else "onnx" for index in range(models)]
    if kind == "mixed":
        _check_frameworks(sorted(set(plan) - {"onnx"}))
    with tempfile.TemporaryDirectory(prefix="tenantserve-synth-") as work:
        if progress is not None:
            progress.begin("writing models", models)
        published: list[tuple[str, int, str]] = []
        for index, framework in enumerate(plan):
            # The names and seeds synth.write_fleet gives (tenants=None), one model on disk
            # at a time.
            model_id = f"tenant-{index:03d}/model-{index:04d}"
            model_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
            folder = Path(work) / f"model-{index:04d}"
            if framework == "onnx":
                write_synthetic_model(folder, size_bytes=size_bytes, seed=model_seed)
                model_file = folder / MODEL_FILE
            else:
                model_file = write_native_model(folder, framework, seed=model_seed)
            publisher.publish(folder, model_id)
            published.append((model_id, model_file.stat().st_size, framework))
            shutil.rmtree(folder)
            if progress is not None:
                progress.advance("writing models")
        return published


def _check_frameworks(frameworks: list[str]) -> None:
    for framework in frameworks:
        modules = {"sklearn": ("sklearn", "skops"), "xgboost": ("xgboost",)}.get(
            framework, (framework,)
        )
        for module in modules:
            if importlib.util.find_spec(module) is None:
                raise MissingFramework(
                    f"a mixed fleet needs {framework}: pip install 'tenantserve[{framework}]' "
                    f"(missing: {module})"
                )
