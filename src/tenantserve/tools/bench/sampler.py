"""Once a second, what the server holds: its process's RSS, threads and CPU, and its /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpx
import psutil

METRICS = {
    "hits": "tenantserve_model_cache_hits_total",
    "misses": "tenantserve_model_cache_misses_total",
    "loads": "tenantserve_model_loading_seconds_count",
    "load_failures": "tenantserve_model_load_failures_total",
    "evictions": "tenantserve_model_evictions_total",
    "rejected": "tenantserve_rejected_requests_total",
    "memory_used_bytes": "tenantserve_memory_used_bytes",
    "memory_budget_bytes": "tenantserve_memory_budget_bytes",
    "loaded_models": "tenantserve_loaded_models",
    "load_slot_s": "tenantserve_model_load_slot_seconds_sum",
    "load_slots": "tenantserve_model_load_slot_seconds_count",
    "loading_wait_s": "tenantserve_model_loading_wait_seconds_sum",
    "loading_waits": "tenantserve_model_loading_wait_seconds_count",
}
"""Figure name → Prometheus sample name (summed over its label sets) read from /metrics."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The server at ``t_s`` seconds into a run; ``None`` where it could not be read."""

    t_s: float
    rss_bytes: int | None
    threads: int | None
    cpu_s: float | None
    metrics: dict[str, float]


def parse_metrics(text: str) -> dict[str, float]:
    """The :data:`METRICS` figures found in Prometheus text exposition ``text``."""
    wanted = {sample: name for name, sample in METRICS.items()}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample = line.split("{", 1)[0].split(" ", 1)[0]
        name = wanted.get(sample)
        if name is not None:
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def read_metrics(url: str, *, timeout_s: float = 10.0) -> dict[str, float]:
    """The :data:`METRICS` figures of the server at ``url``, read now from its /metrics."""
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=timeout_s).text)


def find_pid(url: str) -> int | None:
    """The pid of the process listening on ``url``'s port, if this user may see it."""
    port = urlsplit(url).port
    if port is None:
        return None
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid is not None else None
    return None


class ServerSampler:
    """Samples a server every ``interval_s`` while a run lasts, into :attr:`samples`."""

    def __init__(self, url: str, pid: int | None, *, interval_s: float = 1.0) -> None:
        self._url = url
        self._pid = pid
        self._interval_s = interval_s
        self.samples: list[Sample] = []

    async def run(self, start: float, stop: asyncio.Event) -> None:
        """Sample now, then each interval until ``stop`` is set, then once more.

        ``start`` is the run's :func:`time.perf_counter` origin.
        """
        process: psutil.Process | None = None
        if self._pid is not None:
            with contextlib.suppress(psutil.Error):
                process = psutil.Process(self._pid)
        # Its own session and connection, so scrapes never wait behind the load's pool.
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(base_url=self._url, timeout=timeout) as session:
            while True:
                t_s = time.perf_counter() - start
                self.samples.append(await self._sample(session, process, t_s))
                if stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._interval_s)

    async def _sample(
        self, session: aiohttp.ClientSession, process: psutil.Process | None, t_s: float
    ) -> Sample:
        metrics: dict[str, float] = {}
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get("/metrics") as resp:
                if resp.status == 200:
                    metrics = parse_metrics(await resp.text())
        rss = threads = None
        cpu_s = None
        if process is not None:
            with contextlib.suppress(psutil.Error), process.oneshot():
                rss = int(process.memory_info().rss)
                threads = int(process.num_threads())
                times = process.cpu_times()
                cpu_s = float(times.user + times.system)
        return Sample(t_s, rss, threads, cpu_s, metrics)
