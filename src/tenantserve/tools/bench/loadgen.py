"""Replay a trace over OIP v2 against a loopback server: open loop at its times, or closed loop.

Built not to be the bottleneck on a box it shares with the server: one uvloop event loop, a
pool of keep-alive connections speaking just enough HTTP/1.1 (:mod:`tenantserve.tools.bench.http`),
each model's whole request encoded once, responses framed but not parsed. Open-loop latency
counts from each request's *scheduled* time, so a client queue behind a slow server shows up in
the figures (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import uvloop

from tenantserve.tools.bench.http import Pool, ProtocolError, Reply, build_request
from tenantserve.tools.bench.results import (
    STATUS_CONNECTION_ERROR,
    STATUS_TIMEOUT,
    Outcome,
    RunResult,
)
from tenantserve.tools.bench.sampler import ServerSampler
from tenantserve.tools.bench.traces import Trace

CACHE_HEADER = "X-Tenantserve-Cache"
"""Response header the server sets to ``hit`` or ``miss`` on inference responses."""
N_FEATURES = 16

Progress = Callable[[float, int, int], None]
"""Called about twice a second with (elapsed seconds, requests answered, errors)."""


@dataclass(frozen=True)
class LoadSpec:
    """How to drive the load: the mode and its bounds.

    ``concurrency=None`` is open loop: each request leaves at its trace time, whatever the
    server's pace (up to ``max_connections`` at once; past that they queue in the client and the
    wait counts). A number is closed loop: that many clients send the trace's requests in order,
    each as soon as its previous answer came back, cycling through the trace if it runs out,
    from index ``start_request`` (so slices of one run can continue where the last one ended).
    """

    url: str
    concurrency: int | None = None
    duration_s: float = 60.0
    max_requests: int | None = None
    timeout_s: float = 30.0
    max_connections: int = 256
    drain_s: float = 10.0
    start_request: int = 0


def check_loopback(url: str) -> None:
    """Refuse any URL whose host is not a loopback address: this tool is for one's own box."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"refusing {url!r}: the load generator only targets loopback addresses")


def default_body() -> bytes:
    """An OIP v2 infer body for the synthetic fleet: ``input`` FP32 [1, 16]."""
    data = [round(0.1 * (i - N_FEATURES / 2), 3) for i in range(N_FEATURES)]
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, N_FEATURES], "data": data}
    return orjson.dumps({"inputs": [tensor]})


def replay(
    trace: Trace,
    spec: LoadSpec,
    *,
    label: str = "run",
    body: bytes | None = None,
    bodies: Mapping[str, bytes] | None = None,
    server_pid: int | None = None,
    resident: Iterable[str] = (),
    progress: Progress | None = None,
) -> RunResult:
    """Replay ``trace`` as ``spec`` says and return the raw result (blocks until done).
    Each request sends ``body`` (the synthetic fleet's, by default), or its model's in
    ``bodies``.

    ``resident`` names models known to be loaded before the run; it seeds the fallback
    classification used when the server sends no :data:`CACHE_HEADER` (a request is cold when
    its model was not resident and this is its first request of the run).
    """
    check_loopback(spec.url)
    if not len(trace):
        raise ValueError("the trace is empty")
    payload = body or default_body()
    per_model = {m: (bodies or {}).get(m, payload) for m in trace.model_ids()}
    run = _Replay(trace, spec, per_model, set(resident), progress)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run.main(label, server_pid))


def warm_up(url: str, model_ids: Iterable[str], *, body: bytes | None = None) -> int:
    """Call each model once, in order, untimed; return how many calls failed."""
    check_loopback(url)
    payload = body or default_body()
    host, port = _address(url)

    async def main() -> int:
        failures = 0
        pool = Pool(host, port, limit=1)
        for model_id in model_ids:
            raw = build_request(f"{host}:{port}", _path(model_id), payload, _CONTENT_TYPE)
            conn = await pool.acquire()
            try:
                failures += (await conn.request(raw, timeout_s=120)).status != 200
            except (ProtocolError, TimeoutError):
                failures += 1
            finally:
                pool.release(conn)
        pool.close()
        return failures

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


_CONTENT_TYPE = "application/json"


def _path(model_id: str) -> str:
    return f"/v2/models/{model_id}/infer"


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"expected an http://host:port URL, got {url!r}")
    return parts.hostname, parts.port or 80


class _Replay:
    """One run's state; lives inside one event loop."""

    def __init__(
        self,
        trace: Trace,
        spec: LoadSpec,
        bodies: Mapping[str, bytes],
        seen: set[str],
        progress: Progress | None,
    ) -> None:
        self._trace = trace
        self._spec = spec
        self._seen = seen
        self._progress = progress
        host, port = _address(spec.url)
        self._pool = Pool(host, port, limit=spec.concurrency or spec.max_connections)
        self._raw = {
            m: build_request(f"{host}:{port}", _path(m), body, _CONTENT_TYPE)
            for m, body in bodies.items()
        }
        self._outcomes: list[Outcome] = []
        self._errors = 0
        self._next = spec.start_request
        self._headers_seen = False
        self._start = 0.0

    async def main(self, label: str, server_pid: int | None) -> RunResult:
        spec = self._spec
        sampler = ServerSampler(spec.url, server_pid)
        cpu_before = time.process_time()
        loop = asyncio.get_running_loop()
        self._start = time.perf_counter()
        stop = asyncio.Event()
        watchers = [
            loop.create_task(sampler.run(self._start, stop)),
            loop.create_task(self._report_progress(stop)),
        ]
        try:
            if spec.concurrency is None:
                await self._open_loop()
            else:
                await asyncio.gather(*(self._worker() for _ in range(spec.concurrency)))
            wall_s = time.perf_counter() - self._start
        finally:
            stop.set()
            await asyncio.gather(*watchers)
            self._pool.close()
        return RunResult(
            label=label,
            url=spec.url,
            mode="open" if spec.concurrency is None else "closed",
            concurrency=spec.concurrency,
            trace=self._trace.description,
            wall_s=wall_s,
            outcomes=sorted(self._outcomes, key=lambda o: o.t_s),
            samples=sampler.samples,
            classification="header" if self._headers_seen else "first-seen",
            client_cpu_s=time.process_time() - cpu_before,
            next_request=self._next,
        )

    async def _open_loop(self) -> None:
        loop = asyncio.get_running_loop()
        spec = self._spec
        pending: set[asyncio.Task[None]] = set()
        budget = spec.max_requests if spec.max_requests is not None else len(self._trace)
        for request in itertools.islice(self._trace, budget):
            if request.t_s >= spec.duration_s:
                break
            due = self._start + request.t_s
            delay = due - time.perf_counter()
            if delay > 0.0005:  # uvloop's timers tick in milliseconds: closer is noise
                await asyncio.sleep(delay)
            task = loop.create_task(self._one(request.model_id, request.t_s, time.perf_counter()))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            _, late = await asyncio.wait(pending, timeout=spec.drain_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _worker(self) -> None:
        deadline = self._start + self._spec.duration_s
        while (now := time.perf_counter()) < deadline:
            index = self._take()
            if index is None:
                return
            await self._one(self._trace[index % len(self._trace)].model_id, now - self._start, now)

    def _take(self) -> int | None:
        # Workers share one event loop, so a plain counter hands out indices without a lock.
        index = self._next
        limit = self._spec.max_requests
        if limit is not None and index - self._spec.start_request >= limit:
            return None
        self._next = index + 1
        return index

    async def _one(self, model_id: str, t_s: float, taken: float) -> None:
        """Send one request due ``t_s`` into the run, taken up at ``taken``; record it."""
        reply: Reply | None = None
        try:
            conn = await self._pool.acquire()
            try:
                reply = await conn.request(self._raw[model_id], timeout_s=self._spec.timeout_s)
            finally:
                self._pool.release(conn)
        except TimeoutError:
            status = STATUS_TIMEOUT
        except asyncio.CancelledError:
            self._record(model_id, t_s, taken, STATUS_TIMEOUT, None)  # unanswered at the end
            raise
        except (ProtocolError, OSError):
            status = STATUS_CONNECTION_ERROR
        if reply is not None:
            self._record(model_id, t_s, taken, reply.status, reply.cache)
        else:
            self._record(model_id, t_s, taken, status, None)

    def _record(
        self, model_id: str, t_s: float, taken: float, status: int, cache: str | None
    ) -> None:
        latency_s = time.perf_counter() - taken
        if cache is not None:
            self._headers_seen = True
            cold = cache.lower() == "miss"
        else:
            cold = model_id not in self._seen
        self._seen.add(model_id)
        self._errors += status != 200
        self._outcomes.append(
            Outcome(t_s, model_id, latency_s, status, cold, cache, taken - self._start - t_s)
        )

    async def _report_progress(self, stop: asyncio.Event) -> None:
        if self._progress is None:
            return
        while not stop.is_set():
            self._progress(time.perf_counter() - self._start, len(self._outcomes), self._errors)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        self._progress(time.perf_counter() - self._start, len(self._outcomes), self._errors)
