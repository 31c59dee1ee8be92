"""``tenantserve plan`` and ``replay`` from the command line: one-line mistakes, answers that
say why, output that reads in 80 columns, help that keeps its words."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tenantserve.cli import app
from tenantserve.tools.bench.plan import FleetProfile, ModelCost
from tenantserve.tools.bench.plan_cli import PLAN_COLUMNS
from tenantserve.tools.bench.replay_cli import REPLAY_COLUMNS

runner = CliRunner()
MB = 1_000_000
# Long ids: a cut column or a wrapped line would show in them.
TINY = [f"acme-corporation-emea/support-ticket-intent-classifier-v{i}" for i in range(3)]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Three tiny models: 3 MB, 20 ms to load, 0.2 ms per inference."""
    path = tmp_path / "tiny.json"
    FleetProfile({m: ModelCost(3 * MB, 0.02, 0.0002) for m in TINY}, 3).save(path)
    return path


def _mistakes(tmp_path: Path, tiny: Path) -> dict[str, list[str]]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "ghost.csv").write_text("t_s,model_id\n0.5,ghost/model\n")
    (tmp_path / "bad.json").write_text('{"models": 3}')
    profile = ["--profile", str(tiny)]
    return {
        "no models in the store": ["plan", "--store", str(tmp_path / "empty")],
        "overhead fills the instance": [
            "plan", *profile, "--instance", "1GiB:2", "--overhead", "2GiB"],
        "budget is not a size": ["replay", *profile, "--budget", "lots"],
        "overhead is not a size": ["plan", *profile, "--overhead", "lots"],
        "profile file missing": ["plan", "--profile", str(tmp_path / "nope.json")],
        "profile file malformed": ["replay", "--profile", str(tmp_path / "bad.json"),
                                   "--budget", "1GiB"],
        "plan trace names an unknown model": [
            "plan", *profile, "--trace", str(tmp_path / "ghost.csv")],
        "replay trace names an unknown model": [
            "replay", *profile, "--budget", "1GiB", "--trace", str(tmp_path / "ghost.csv")],
        "trace file missing": ["plan", *profile, "--trace", str(tmp_path / "nope.csv")],
        "neither store nor profile": ["plan"],
        "instance not MEMORY:CORES": ["plan", *profile, "--instance", "big:2"],
        "no cores": ["plan", *profile, "--instance", "8GiB:0"],
        "unknown trace kind": ["replay", *profile, "--budget", "1GiB", "--kind", "weird"],
        "rate of zero": ["plan", *profile, "--rate", "0"],
        "policy the planner does not model": ["plan", *profile, "--policy", "belady"],
        "replay without a budget": ["replay", *profile],
        "a table with a budget": ["replay", *profile, "--compare", "--budget", "1GiB"],
        "a made-up fleet beside a profile": ["replay", *profile, "--synthetic", "9:1MB-2MB"],
        "a made-up fleet misspelt": ["replay", "--synthetic", "9:1MB"],
        "a made-up fleet upside down": ["replay", "--synthetic", "9:2MB-1MB", "--compare"],
    }  # fmt: skip


def test_every_ordinary_mistake_is_one_line_and_exit_2(tmp_path: Path, tiny: Path) -> None:
    for what, args in _mistakes(tmp_path, tiny).items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (what, result.output, result.exception)
        assert result.stdout == "", what
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (what, result.stderr)
        assert lines[0].startswith("error: "), (what, lines)
        assert "Traceback" not in result.output, what


def test_a_mistake_says_what_to_do(tmp_path: Path, tiny: Path) -> None:
    said = {
        what: runner.invoke(app, args).stderr for what, args in _mistakes(tmp_path, tiny).items()
    }
    assert "--store" in said["neither store nor profile"]
    assert "--profile" in said["neither store nor profile"]
    assert "--save-profile" in said["profile file missing"]
    assert "ghost/model" in said["replay trace names an unknown model"]
    assert "smaller --overhead" in said["overhead fills the instance"]
    assert "--budget" in said["budget is not a size"]
    assert "MEMORY:CORES" in said["instance not MEMORY:CORES"]


def test_a_mistake_without_the_cli_runner_prints_no_traceback(tiny: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tenantserve", "replay", "--profile", str(tiny), "--budget",
         "lots"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("error: --budget: 'lots' is not a size")
    assert len(done.stderr.splitlines()) == 1


def _plan_json(tiny: Path, *extra: str) -> list[dict[str, Any]]:
    result = runner.invoke(
        app,
        ["plan", "--profile", str(tiny), "--rate", "2000", "--duration-s", "10",
         "--p99-target-ms", "5", "--instance", "4GiB:2", "--json", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def test_three_tiny_models_spread_the_hot_one_and_meet_the_target(tiny: Path) -> None:
    # The case: 2,000 req/s and a 5 ms p99. Routed to one instance per model, the
    # hot model's instance ran at ~84% and the p99 stayed ~9.6 ms at any count. An instance
    # handles 769 req/s (1.3 ms a request on its event loop): 4 waiting take 5 ms, so holders
    # spill at 4 (the default, 16, is explained in the next test).
    (row,) = _plan_json(tiny, "--max-ongoing-requests", "4")
    assert row["meets_target"], row
    assert row["hot_model"] in TINY
    assert row["hot_model_copies"] >= 2
    assert row["instances"] <= 4
    assert row["p99_s"] <= 0.005
    assert "spread over" in row["reason"]
    assert f"With {row['instances'] - 1}: " in row["reason"]  # what one fewer missed by


def test_a_hot_model_that_cannot_spread_in_time_is_explained(tiny: Path) -> None:
    # A holder spills only at 200 ongoing requests: its queue passes 5 ms long before that.
    (row,) = _plan_json(tiny, "--max-ongoing-requests", "200")
    assert not row["meets_target"]
    reason = row["reason"]
    assert "More instances stop helping" in reason
    assert row["hot_model"] in reason
    assert "--max-ongoing-requests 3" in reason  # floor(5 ms x 769 req/s)


def test_a_target_below_one_requests_service_time_is_explained(tiny: Path) -> None:
    (row,) = _plan_json(tiny, "--p99-target-ms", "1")
    assert not row["meets_target"]
    assert "No count meets a p99 of 1 ms" in row["reason"]
    assert "Raise --p99-target-ms above 1.5 ms" in row["reason"]


def _lines(result_output: str) -> list[str]:
    return result_output.splitlines()


def test_plan_reads_in_80_columns(tiny: Path) -> None:
    result = runner.invoke(
        app,
        ["plan", "--profile", str(tiny), "--rate", "2000", "--duration-s", "10",
         "--p99-target-ms", "5", "--instance", "4GiB:2", "--instance", "8GiB:1"],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert not any(line != line.rstrip() for line in lines)
    assert "…" not in result.stdout
    for column in PLAN_COLUMNS[1:]:  # stacked: one "label  value" line per column
        assert any(line.strip().startswith(column + " ") for line in lines), column
    named = [m for m in TINY if m in result.stdout]
    assert named  # the notes name the hot model, whole, on one line
    assert all(any(m in line for line in lines) for m in named)


def test_plan_is_a_table_where_it_fits(tiny: Path) -> None:
    result = runner.invoke(
        app,
        ["plan", "--profile", str(tiny), "--rate", "200", "--duration-s", "5",
         "--instance", "4GiB:2"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    header = next(line for line in _lines(result.stdout) if "req/s each" in line)
    assert all(column in header for column in PLAN_COLUMNS)


def test_replay_reads_in_80_columns(tiny: Path) -> None:
    result = runner.invoke(
        app,
        ["replay", "--profile", str(tiny), "--budget", "2MB", "--rate", "20",
         "--duration-s", "10"],
        env={"COLUMNS": "80"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert max(len(line) for line in lines) <= 80, result.stdout
    assert "…" not in result.stdout
    assert all(column in result.stdout for column in REPLAY_COLUMNS)
    # Every model is larger than 2 MB: the note names the largest, whole.
    assert any(TINY[0] in line or TINY[1] in line or TINY[2] in line for line in lines)
    assert result.stderr == ""  # no warning per refused load


def test_replay_compare_prints_the_policy_table_as_markdown() -> None:
    result = runner.invoke(
        app,
        ["replay", "--compare", "--synthetic", "12:1MB-2MB", "--rate", "50", "--duration-s", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == (
        "| policy | zipf 1/8 | zipf 1/4 | zipf 1/2 | shifting 1/8 | shifting 1/4 | "
        "shifting 1/2 | flat 1/8 | flat 1/4 | flat 1/2 |"
    )
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows[2:]]
    assert names == [
        "lru", "cost", "decayed-cost", "adaptive-cost (default)", "s3fifo", "sieve", "wtinylfu",
        "best of lru, s3fifo, sieve, wtinylfu", "belady (clairvoyant)",
    ]  # fmt: skip
    for row in rows[2:]:
        assert all(0 < float(cell) <= 1 for cell in row.strip("|").split("|")[1:]), row
    assert "The default (adaptive-cost)" in result.stdout


def _help(command: str) -> str:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())


@pytest.mark.parametrize("command", ["plan", "replay"])
def test_help_keeps_every_word(command: str) -> None:
    shown = _help(command)
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    texts = [click_command.help or ""] + [p.help or "" for p in click_command.params]
    for text in texts:
        for word in re.findall(r"[A-Za-z][A-Za-z0-9_:.-]*[A-Za-z0-9]", text):
            assert word in shown, (word, text)


def test_help_documents_every_column() -> None:
    plan_help, replay_help = _help("plan"), _help("replay")
    for column in PLAN_COLUMNS:
        assert f"{column}:" in plan_help or f"{column}," in plan_help, column
    for column in REPLAY_COLUMNS:
        assert f"{column}:" in replay_help, column


def test_docs_document_every_column() -> None:
    doc = (Path(__file__).parents[4] / "docs" / "planning.md").read_text()
    for column in (*PLAN_COLUMNS, *REPLAY_COLUMNS):
        assert f"| {column} |" in doc, column
