"""The same closed loop driven by wrk (C), to show the Python load generator is not the limit."""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
local ids = {%s}
local body = [==[%s]==]
local headers = {["Content-Type"] = "application/json"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v2/models/" .. ids[(i %% #ids) + 1] .. "/infer", headers, body)
end
"""
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class WrkResult:
    """What wrk measured: answered requests, their rate, latency percentiles (seconds), and
    the CPU time wrk itself used (``None`` when parsed from text)."""

    requests: int
    rate: float
    p50_s: float
    p99_s: float
    errors: int
    cpu_s: float | None = None


@dataclass(frozen=True)
class WrkCheck:
    """wrk and this load generator, in turn, closed loop on one warm model of the same server."""

    server: str
    model_id: str
    concurrency: int
    duration_s: float
    wrk_rps: tuple[float, ...]
    loadgen_rps: tuple[float, ...]
    wrk_cpu_us: float
    """wrk's CPU time per answered request, microseconds."""
    loadgen_cpu_us: float
    """The load generator's CPU time per answered request, microseconds."""

    @property
    def ratio(self) -> float:
        """Median load generator req/s over median wrk req/s (1.0: as fast as wrk)."""
        return statistics.median(self.loadgen_rps) / statistics.median(self.wrk_rps)


def wrk_available() -> bool:
    """Whether a ``wrk`` binary is on the PATH."""
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    model_ids: Sequence[str],
    *,
    body: bytes,
    concurrency: int,
    duration_s: float,
    threads: int = 1,
) -> WrkResult:
    """Run wrk with ``concurrency`` connections, cycling over ``model_ids``, for ``duration_s``."""
    ids = ", ".join(f'"{m}"' for m in model_ids)
    with tempfile.TemporaryDirectory(prefix="tenantserve-wrk-") as tmp:
        script = Path(tmp) / "infer.lua"
        script.write_text(_SCRIPT % (ids, body.decode()))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s",
             "--latency", "-s", str(script), url],
            capture_output=True, text=True, check=True, timeout=duration_s + 60,
        ).stdout  # fmt: skip
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dataclasses.replace(parse_wrk(out), cpu_s=cpu_s)


def parse_wrk(out: str) -> WrkResult:
    """Read the figures out of ``wrk --latency`` output."""

    def number(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out)
        if match is None:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{out}")
        return match

    def pct(p: str) -> float:
        match = number(rf"\s{p}%\s+([\d.]+)(us|ms|s)")
        return float(match.group(1)) * _UNITS[match.group(2)]

    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return WrkResult(
        requests=int(number(r"(\d+) requests in").group(1)),
        rate=float(number(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_s=pct("50"),
        p99_s=pct("99"),
        errors=errors,
    )
