"""``tenantserve bench``: trace files, refusals, a small run, the suite's fleet and targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tenantserve.cli import app
from tenantserve.tools.bench import trace_kinds, traces
from tenantserve.tools.bench.suite import ensure_fleet, targets
from tenantserve.tools.bench.summary import LatencyStats, Summary

runner = CliRunner()


def test_trace_command_writes_a_loadable_file(tmp_path: Path) -> None:
    out = tmp_path / "flood.csv"
    result = runner.invoke(
        app,
        [
            "bench",
            "trace",
            "flood",
            "--models",
            "30",
            "--rate",
            "50",
            "--duration-s",
            "10",
            "--param",
            "share=0.4",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = traces.load_trace(out)
    assert 400 < len(loaded) < 600
    assert (
        loaded.requests
        == trace_kinds.flood(
            [f"tenant-{i:03d}/model-{i:04d}" for i in range(30)],
            rate=50,
            duration_s=10,
            seed=0,
            share=0.4,
        ).requests
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://10.1.2.3:8080", "--concurrency", "1"], "loopback"),
        (["--url", "http://127.0.0.1:1"], "--rate"),
        (["--concurrency", "1"], "--url"),
        (["--url", "http://127.0.0.1:1", "--floor", "--rate", "5"], "--floor needs --store"),
    ],
)
def test_run_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", "run", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_bad_trace_parameters_are_reported(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["bench", "trace", "uniform", "--param", "s=2", "--out", str(tmp_path / "t.jsonl")]
    )
    assert result.exit_code == 2
    assert "bad parameters" in result.output


@pytest.mark.slow
def test_run_with_floor_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "bench",
            "run",
            "--store",
            str(tmp_path / "store"),
            "--models",
            "3",
            "--size-mb",
            "0.05",
            "--floor",
            "--concurrency",
            "2",
            "--duration-s",
            "30",
            "--max-requests",
            "60",
            "--wrk-check-s",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "report.json").read_text())
    summaries = {s["label"]: s for s in doc["summaries"]}
    assert set(summaries) == {"floor", "tenantserve"}
    for summary in summaries.values():
        assert summary["requests"] == 60
        assert summary["ok"] == 60
    assert summaries["tenantserve"]["classification"] == "header"
    assert "| tenantserve | closed, 2 | 60 | 0 |" in (out / "report.md").read_text()
    assert (out / "latency.png").is_file()


def test_suite_fleet_is_reused_and_never_replaces_foreign_folders(tmp_path: Path) -> None:
    console = Console(quiet=True)
    store = tmp_path / "store"
    ids = ensure_fleet(store, models=2, size_bytes=20_000, seed=0, console=console)
    stamp = (store / ids[0] / "model.onnx").stat().st_mtime_ns
    assert ensure_fleet(store, models=2, size_bytes=20_000, seed=0, console=console) == ids
    assert (store / ids[0] / "model.onnx").stat().st_mtime_ns == stamp
    assert len(ensure_fleet(store, models=3, size_bytes=20_000, seed=0, console=console)) == 3
    foreign = tmp_path / "mine"
    (foreign / "acme").mkdir(parents=True)
    with pytest.raises(ValueError, match="did not write"):
        ensure_fleet(foreign, models=1, size_bytes=20_000, seed=0, console=console)
    assert (foreign / "acme").is_dir()


def _summary(label: str, rps: float, p99_s: float, max_s: float) -> Summary:
    stats = LatencyStats(100, p99_s / 2, p99_s, p99_s, max_s)
    return Summary(
        label,
        "closed",
        16,
        "t",
        10.0,
        100,
        100,
        rps,
        stats,
        stats,
        None,
        "header",
        1.0,
        1.0,
        0,
        0,
        {},
        None,
        None,
        None,
        0.0,
        0.0,
    )


def test_targets_are_checked_against_the_floor() -> None:
    lines = targets(
        {
            "floor": _summary("floor", 1000, 0.010, 0.05),
            "tenantserve-all": _summary("tenantserve-all", 950, 0.020, 0.05),
            "tenantserve-quarter-lru": _summary("tenantserve-quarter-lru", 600, 0.2, 1.2),
        },
        ["lru"],
    )
    text = "\n".join(lines)
    assert "throughput / floor: 0.95 (>= 0.9: met)" in text
    assert "p99 / floor p99: 2.00 (<= 1.5: NOT met)" in text
    assert "quarter budget (lru), throughput / floor: 0.60 (>= 0.7: NOT met)" in text
    assert "slowest request (s): 1.20 (<= 1: NOT met)" in text
    # Issue 17's: a quarter of the floor's req/s and a p99 of 250 ms, the cache starting empty.
    assert "quarter budget (lru), throughput / floor: 0.60 (>= 0.4: met)" in text
    assert "quarter budget (lru), p99 (ms): 200.00 (<= 250: met)" in text
