"""Reports of benchmark runs: JSON with every raw figure, Markdown tables and PNG plots.

Every run's figures can be stated as a ratio of a floor run (the raw floor server on the same
trace).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.metadata
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from tenantserve.tools.bench.results import RunResult
from tenantserve.tools.bench.summary import LatencyStats, Summary, summarize
from tenantserve.tools.bench.wrk import WrkCheck


def markdown(
    summaries: Sequence[Summary],
    *,
    floor: Summary | None = None,
    wrk_checks: Sequence[WrkCheck] = (),
) -> str:
    """Markdown tables: throughput and latency, warm and cold, cache and server, client check."""
    base_rps = floor.throughput_rps if floor else None
    base_p99 = floor.latency.p99_s if floor and floor.latency else None
    speed = []
    for s in summaries:
        lat = s.latency or _NO_LATENCY
        mode = s.mode if s.concurrency is None else f"closed, {s.concurrency}"
        speed.append(
            [
                s.label,
                mode,
                str(s.requests),
                str(s.requests - s.ok),
                f"{s.throughput_rps:.0f}",
                _ratio(s.throughput_rps, base_rps),
                _ms(lat.p50_s),
                _ms(lat.p90_s),
                _ms(lat.p99_s),
                _ratio(lat.p99_s, base_p99),
                _ms(lat.max_s),
            ]
        )
    split = []
    for s in summaries:
        w, c = s.warm or _NO_LATENCY, s.cold or _NO_LATENCY
        split.append(
            [
                s.label,
                str(w.n),
                _ms(w.p50_s),
                _ms(w.p99_s),
                str(c.n),
                _ms(c.p50_s),
                _ms(c.p99_s),
                _ms(c.max_s),
                s.classification,
            ]
        )
    server = []
    for s in summaries:
        hit = s.hit_ratio if s.hit_ratio is not None else s.client_hit_ratio
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "none"
        rss = f"{s.peak_rss_bytes / 2**20:.0f}" if s.peak_rss_bytes is not None else "-"
        server.append(
            [
                s.label,
                f"{hit:.3f}",
                _int(s.loads),
                _int(s.evictions),
                errors,
                rss,
                _int(s.peak_threads),
                _share(s.server_cpu_s, s.wall_s),
                _share(s.client_cpu_s, s.wall_s),
                _ms(s.client_lag_p99_s),
            ]
        )
    lines = _table(
        [
            "run",
            "mode",
            "requests",
            "errors",
            "req/s",
            "x floor",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99 x floor",
            "max ms",
        ],
        speed,
    )
    lines += _table(
        [
            "run",
            "warm n",
            "warm p50 ms",
            "warm p99 ms",
            "cold n",
            "cold p50 ms",
            "cold p99 ms",
            "cold max ms",
            "cold by",
        ],
        split,
    )
    lines += _table(
        [
            "run",
            "hit ratio",
            "loads",
            "evictions",
            "errors by status",
            "peak RSS MiB",
            "peak threads",
            "server CPU",
            "client CPU",
            "client lag p99 ms",
        ],
        server,
    )
    if wrk_checks:
        checks = [
            [
                w.server,
                str(w.concurrency),
                " / ".join(f"{r:.0f}" for r in w.wrk_rps),
                " / ".join(f"{r:.0f}" for r in w.loadgen_rps),
                f"{w.ratio:.2f}",
                f"{w.wrk_cpu_us:.0f} / {w.loadgen_cpu_us:.0f}",
            ]
            for w in wrk_checks
        ]
        lines += _table(
            [
                "client check: one warm model, closed loop",
                "connections",
                "wrk req/s, in turn",
                "load generator req/s, between",
                "medians: load generator / wrk",
                "client CPU µs per request: wrk / load generator",
            ],
            checks,
        )
    return "\n".join(lines[:-1]) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, first column left-aligned and the rest right-aligned, then a blank."""
    rule = "|---|" + "---:|" * (len(header) - 1)
    return [f"| {' | '.join(header)} |", rule, *(f"| {' | '.join(r)} |" for r in rows), ""]


_NO_LATENCY = LatencyStats(0, math.nan, math.nan, math.nan, math.nan)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        names = [
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    ort = "not installed"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        ort = importlib.metadata.version("onnxruntime")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": ort,
    }


def write_report(
    out_dir: Path,
    runs: Sequence[RunResult],
    *,
    floor_label: str | None = None,
    wrk_checks: Sequence[WrkCheck] = (),
    title: str = "tenantserve benchmark",
    notes: Sequence[str] = (),
    footer: Sequence[str] = (),
    plots: bool = True,
) -> str:
    """Write report.json, report.md, requests-<label>.csv and plots; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = [summarize(r) for r in runs]
    floor = next((s for s in summaries if s.label == floor_label), None)
    text = f"# {title}\n\n" + "".join(f"{n}\n" for n in notes) + ("\n" if notes else "")
    text += markdown(summaries, floor=floor, wrk_checks=wrk_checks)
    text += "".join(f"\n{line}" for line in footer) + ("\n" if footer else "")
    doc = {
        "title": title,
        "machine": machine(),
        "floor": floor_label,
        "summaries": [dataclasses.asdict(s) for s in summaries],
        "wrk_checks": [dataclasses.asdict(w) | {"ratio": w.ratio} for w in wrk_checks],
        "samples": {r.label: [dataclasses.asdict(s) for s in r.samples] for r in runs},
        "meta": {r.label: r.meta for r in runs},
    }
    (out_dir / "report.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    for run in runs:
        with (out_dir / f"requests-{run.label}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t_s", "model_id", "latency_s", "status", "cold", "cache"])
            writer.writerows(
                (
                    f"{o.t_s:.6f}",
                    o.model_id,
                    f"{o.latency_s:.6f}",
                    o.status,
                    int(o.cold),
                    o.cache or "",
                )
                for o in run.outcomes
            )
    if plots:
        from tenantserve.tools.bench.plots import write_plots

        names = write_plots(out_dir, runs)
        text += "\n" + " ".join(f"![{n}]({n})" for n in names) + "\n"
    (out_dir / "report.md").write_text(text)
    return text


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if math.isfinite(seconds) else "-"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}" if base and math.isfinite(value) else "-"


def _int(value: int | None) -> str:
    return str(value) if value is not None else "-"


def _share(cpu_s: float | None, wall_s: float) -> str:
    """CPU time as a share of one core over the run."""
    return f"{cpu_s / wall_s:.0%}" if cpu_s is not None and wall_s > 0 else "-"
