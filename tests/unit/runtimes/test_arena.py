"""Sessions allocate a run's tensors from one shared arena, not each from its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tenantserve import memory
from tenantserve.runtimes.onnx import OnnxRuntime
from tenantserve.tools.fleet.synth import write_synthetic_model
from tenantserve.types import ModelManifest

SESSIONS = 16
ROWS = 16


def _anon_mb() -> float:
    return memory.anon_bytes() / 1e6


def _wide(tmp_path: Path) -> Path:
    # A 25,000-wide hidden layer: 16 rows make two 1.6 MB activations per run.
    return write_synthetic_model(tmp_path / "wide", size_bytes=2_000_000, seed=0)


def _run_each(sessions: list[ort.InferenceSession]) -> None:
    batch = np.ones((ROWS, 16), np.float32)
    for session in sessions:
        session.run(None, {"input": batch})


def test_resident_models_keep_no_activations_after_their_runs(tmp_path: Path) -> None:
    folder = _wide(tmp_path)
    runtime = OnnxRuntime()
    warm = runtime.load(folder, ModelManifest())
    batch = {"input": np.ones((ROWS, 16), np.float32)}
    warm.predict(batch)  # the shared arena grows once, to what one run needs
    models = [runtime.load(folder, ModelManifest()) for _ in range(SESSIONS)]
    loaded = _anon_mb()
    for model in models:
        model.predict(batch)
    # A session of its own keeps ~1.7 MB after such a run (the control test below).
    assert _anon_mb() - loaded < 0.25 * SESSIONS


def test_a_session_with_its_own_arena_keeps_what_its_run_needed(tmp_path: Path) -> None:
    """The control: what the shared arena saves, measured the same way."""
    model_file = str(_wide(tmp_path) / "model.onnx")
    options = ort.SessionOptions()  # ONNX Runtime's defaults: an arena per session
    options.intra_op_num_threads = 1
    _run_each([ort.InferenceSession(model_file, options)])
    sessions = [ort.InferenceSession(model_file, options) for _ in range(SESSIONS)]
    loaded = _anon_mb()
    _run_each(sessions)
    assert _anon_mb() - loaded > 0.75 * SESSIONS
