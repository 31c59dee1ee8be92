"""The README's ``make demo`` runs end to end: builds tenants, serves, answers, stops cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.models import find_datasets
from fixtures.server import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_serves_real_tickets_over_both_protocols(tmp_path: Path) -> None:
    datasets = find_datasets()
    if datasets is None:
        pytest.skip("Banking77 not found: set TENANTSERVE_DATASETS to the shared/datasets folder")
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--no-wait", "--tenants", "4",
         "--store", str(tmp_path / "store"), "--port", str(free_port()),
         "--datasets", str(datasets)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "OIP" in out
    assert "SageMaker" in out
    assert "suggestions match the ticket's true intent" in out
    assert "cache hits" in out
    assert "curl -s -X POST" in out
    assert "server stopped" in out
    assert len(list((tmp_path / "store").glob("*/macros/model.onnx"))) == 4
