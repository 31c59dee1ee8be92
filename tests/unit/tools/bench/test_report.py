"""Reports: summaries from raw outcomes, Markdown ratios to the floor, files written, parsers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tenantserve.tools.bench.report import markdown, write_report
from tenantserve.tools.bench.results import Outcome, RunResult, join_runs
from tenantserve.tools.bench.sampler import Sample, parse_metrics
from tenantserve.tools.bench.summary import latency_stats, summarize
from tenantserve.tools.bench.wrk import WrkCheck, parse_wrk


def _run(label: str, latencies_ms: list[int], *, cold_every: int = 0) -> RunResult:
    outcomes = [
        Outcome(
            i * 0.01, f"t/m{i % 3}", ms / 1000, 200, bool(cold_every and i % cold_every == 0), "hit"
        )
        for i, ms in enumerate(latencies_ms)
    ]
    outcomes += [
        Outcome(5.0, "t/m0", 0.5, 503, False, None),
        Outcome(5.1, "t/m0", 30.0, -1, False, None),
    ]
    samples = [
        Sample(0.0, 100 * 2**20, 10, 1.0, {"hits": 10, "misses": 5, "loads": 5, "evictions": 0}),
        Sample(1.0, 300 * 2**20, 12, 2.0, {"hits": 40, "misses": 15, "loads": 15, "evictions": 7}),
        Sample(2.0, 200 * 2**20, 11, 2.5, {"hits": 70, "misses": 15, "loads": 15, "evictions": 7}),
    ]
    return RunResult(
        label, "http://127.0.0.1:1", "closed", 4, "test", 2.0, outcomes, samples, "header", 0.5
    )


def test_latency_stats_are_nearest_rank() -> None:
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats is not None
    assert (stats.n, stats.p50_s, stats.p90_s, stats.p99_s, stats.max_s) == (100, 50, 90, 99, 100)
    assert latency_stats([]) is None


def test_summary_splits_warm_cold_errors_and_reads_sample_deltas() -> None:
    summary = summarize(_run("ts", list(range(1, 101)), cold_every=10))
    assert summary.requests == 102
    assert summary.ok == 100
    assert summary.throughput_rps == 50.0
    assert summary.errors == {"-1": 1, "503": 1}
    assert summary.cold is not None
    assert summary.warm is not None
    assert summary.cold.n == 10
    assert summary.warm.n == 90
    assert summary.hit_ratio == pytest.approx(60 / 70)  # deltas: 60 hits, 10 misses
    assert (summary.loads, summary.evictions) == (10, 7)
    assert summary.peak_rss_bytes == 300 * 2**20
    assert summary.peak_threads == 12
    assert summary.server_cpu_s == pytest.approx(1.5)
    assert summary.latency is not None
    assert summary.latency.max_s == pytest.approx(0.1)  # errors stay out of the latencies


def test_markdown_states_ratios_to_the_floor() -> None:
    floor = summarize(_run("floor", [10] * 100))
    ts = summarize(_run("ts", [20] * 100))
    check = WrkCheck("floor", "t/m0", 16, 8.0, (1000.0, 1200.0, 1100.0), (1045.0, 900.0), 9, 31)
    text = markdown([floor, ts], floor=floor, wrk_checks=[check])
    row = next(line for line in text.splitlines() if line.startswith("| ts |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == "1.00"  # same throughput
    assert cells[9] == "2.00"  # p99 twice the floor's
    assert "| floor | 16 | 1000 / 1200 / 1100 | 1045 / 900 | 0.88 | 9 / 31 |" in text


def test_write_report_writes_json_markdown_csv_and_plots(tmp_path: Path) -> None:
    runs = [_run("floor", [10] * 50), _run("ts", [20] * 50, cold_every=5)]
    text = write_report(tmp_path, runs, floor_label="floor", notes=["a note"], footer=["- end"])
    assert text == (tmp_path / "report.md").read_text()
    assert text.startswith("# tenantserve benchmark\n\na note\n")
    assert "- end" in text
    doc = json.loads((tmp_path / "report.json").read_text())
    assert [s["label"] for s in doc["summaries"]] == ["floor", "ts"]
    assert doc["floor"] == "floor"
    assert len(doc["samples"]["ts"]) == 3
    with (tmp_path / "requests-ts.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 52
    assert sum(r["cold"] == "1" for r in rows) == 10
    for name in ("latency.png", "hit_ratio.png", "memory.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_metrics_sums_label_sets_and_ignores_others() -> None:
    text = """# HELP tenantserve_model_cache_hits_total x
tenantserve_model_cache_hits_total 12.0
tenantserve_model_cache_misses_total 3.0
tenantserve_model_loading_seconds_count 3.0
tenantserve_model_loading_seconds_sum 0.4
tenantserve_rejected_requests_total{reason="overloaded"} 2.0
tenantserve_rejected_requests_total{reason="tenant"} 1.0
tenantserve_memory_used_bytes 1.5e+07
"""
    assert parse_metrics(text) == {
        "hits": 12.0,
        "misses": 3.0,
        "loads": 3.0,
        "rejected": 3.0,
        "memory_used_bytes": 15e6,
    }


def test_parse_wrk_reads_rate_percentiles_and_errors() -> None:
    out = """Running 8s test @ http://127.0.0.1:8080
  1 threads and 16 connections
  Latency Distribution
     50%    5.40ms
     75%    7.00ms
     90%   10.00ms
     99%   38.37ms
  19620 requests in 8.04s, 4.1MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2439.37
"""
    result = parse_wrk(out)
    assert result.requests == 19620
    assert result.rate == 2439.37
    assert result.p50_s == pytest.approx(0.0054)
    assert result.p99_s == pytest.approx(0.03837)
    assert result.errors == 7
    with pytest.raises(ValueError, match="no match"):
        parse_wrk("garbage")


def test_join_runs_puts_slices_end_to_end() -> None:
    first, second = _run("ts", [10] * 5), _run("ts", [20] * 5)
    joined = join_runs([first, second])
    assert joined.wall_s == 4.0
    assert len(joined.outcomes) == 14
    assert joined.outcomes[7].t_s == pytest.approx(2.0 + second.outcomes[0].t_s)
    assert [s.t_s for s in joined.samples] == [0.0, 1.0, 2.0, 2.0, 3.0, 4.0]
    assert joined.client_cpu_s == 1.0
    assert joined.meta == {"slices": 2}
    with pytest.raises(ValueError, match="no runs"):
        join_runs([])
