"""The README's ``make demo`` runs end to end from a fresh clone: builds tenants from the data
the repository holds, serves, answers, stops cleanly, and leaves nothing untracked behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.server import free_port

REPO = Path(__file__).resolve().parents[2]
TICKETS = 10
WIDTH = 80


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of this repository's HEAD in an empty folder, with nothing beside it."""
    dest = tmp_path_factory.mktemp("clone") / "tenantserve"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True, timeout=120)
    return dest


def _demo(cwd: Path, *args: str) -> str:
    """Run the clone's demo with ``--no-wait`` from ``cwd`` as a user would, 80 columns wide,
    with no dataset folder configured; its stdout, after checking it succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "TENANTSERVE_DATASETS"}
    # The clone's own package, not this checkout's (the venv's editable install points here).
    env.update(PYTHONPATH=str(cwd / "src"), COLUMNS=str(WIDTH), TERM="dumb")
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "--no-wait", *args, "--port", str(free_port())],
        cwd=cwd, capture_output=True, text=True, timeout=280, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    # Copyable curl commands stay on one line; everything else reads in 80 columns.
    wide = [line for line in out.splitlines() if len(line) > WIDTH and "curl " not in line]
    assert not wide, wide
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


def _untracked(clone: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.slow
def test_demo_on_a_fresh_clone_serves_real_tickets_over_both_protocols(clone: Path) -> None:
    _demo(clone, "--tenants", "4")
    store = clone / "demo-store"
    assert len(list(store.glob("*/macros/model.onnx"))) == 4
    manifests = _manifests(store)
    assert len(manifests) == 4
    for manifest in manifests:
        assert manifest["postprocess"] == {"top_k": 5, "scores_output": "probabilities"}
        assert "preprocess" not in manifest
    # A second run reuses the fleet rather than building it again.
    assert "reusing them" in _demo(clone, "--tenants", "4")
    # The store (ignored) holds the server's log; nothing untracked is left in the clone.
    assert (store / ".server.log").is_file()
    assert _untracked(clone) == ""


@pytest.mark.slow
def test_demo_minilm_kind_serves_tenants_the_server_tokenises_for(
    clone: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    # Seed 4 draws two small tenants (17 and 13 macros): the build stays short.
    out = _demo(clone, "--kind", "minilm", "--tenants", "2", "--seed", "4", "--store", str(store))
    assert "building 2 minilm tenant classifiers (about a minute)" in out
    assert len(list(store.glob("*/macros/tokenizer.json"))) == 2
    manifests = _manifests(store)
    assert len(manifests) == 2
    for manifest in manifests:
        assert isinstance(manifest["preprocess"], dict)
        assert "postprocess" in manifest
