"""The README's ``make demo`` runs end to end: builds tenants, serves, answers, stops cleanly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.models import find_datasets
from fixtures.server import free_port

REPO = Path(__file__).resolve().parents[2]
TICKETS = 10


def _demo(store: Path, *args: str) -> str:
    """Run the demo with ``--no-wait`` on ``store``; its stdout, after checking it succeeded."""
    datasets = find_datasets()
    if datasets is None:
        pytest.skip("Banking77 not found: set TENANTSERVE_DATASETS to the shared/datasets folder")
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--no-wait", *args,
         "--store", str(store), "--port", str(free_port()), "--datasets", str(datasets)],
        capture_output=True, text=True, timeout=280, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "OIP" in out
    assert "SageMaker" in out
    # Every ticket answered with macros (an error shows as its JSON body in the table).
    assert '{"error"' not in out
    matched = re.search(rf"(\d+)/{TICKETS} suggestions match the ticket's true intent", out)
    assert matched is not None, out[-2000:]
    assert int(matched[1]) >= TICKETS // 2
    assert "cache hits" in out
    assert "curl -s -X POST" in out
    assert '"outputs": [{"name": "macros"}, {"name": "scores"}]' in out
    assert "server stopped" in out
    return out


def _manifests(store: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(store.glob("*/macros/model.json"))]


@pytest.mark.slow
def test_demo_serves_real_tickets_over_both_protocols(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _demo(store, "--tenants", "4")
    assert len(list(store.glob("*/macros/model.onnx"))) == 4
    manifests = _manifests(store)
    assert len(manifests) == 4
    for manifest in manifests:
        assert manifest["postprocess"] == {"top_k": 5, "scores_output": "probabilities"}
        assert "preprocess" not in manifest
    # A second run reuses the fleet rather than building it again.
    assert "reusing them" in _demo(store, "--tenants", "4")


@pytest.mark.slow
def test_demo_minilm_kind_serves_tenants_the_server_tokenises_for(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # Seed 4 draws two small tenants (17 and 13 macros): the build stays short.
    out = _demo(store, "--kind", "minilm", "--tenants", "2", "--seed", "4")
    assert "building 2 minilm tenant classifiers (about a minute)" in out
    assert len(list(store.glob("*/macros/tokenizer.json"))) == 2
    manifests = _manifests(store)
    assert len(manifests) == 2
    for manifest in manifests:
        assert isinstance(manifest["preprocess"], dict)
        assert "postprocess" in manifest
