"""Lean open- and closed-loop HTTP/1.1 load for bench_isolation.py (keep-alive, pre-built bytes).

Each stream runs in its own process (see ``run_stream``), so a flooding stream's client work
never delays the timing of the stream that is measured. Latency is taken from the moment a
request was due, not when it was sent, so a late client cannot hide server slowness.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """Where and what to send: one pre-built request."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    def raw(self) -> bytes:
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{name}: {value}" for name, value in self.headers]
        head.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass
class Outcome:
    """Statuses, latencies (seconds), whether each refusal carried Retry-After, and when each
    request was due (seconds from the stream's start)."""

    latencies: list[float] = field(default_factory=list)
    due_s: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    retry_after: list[bool] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    def ok(self) -> list[float]:
        return [t for t, s in zip(self.latencies, self.statuses, strict=True) if s == 200]

    def merge(self, other: Outcome) -> None:
        self.latencies += other.latencies
        self.due_s += other.due_s
        self.statuses += other.statuses
        self.retry_after += other.retry_after
        self.errors += other.errors


# uvicorn closes keep-alive connections idle for 5 s; reusing one then fails for no fault
# of the server, so idle connections are retired sooner.
_IDLE_S = 3.0


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used_at = time.monotonic()

    async def roundtrip(self, raw: bytes) -> tuple[int, float | None, bool]:
        """(status, Retry-After seconds or ``None``, keep-alive)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, retry, keep = 0, None, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "retry-after":
                retry = float(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        await self.reader.readexactly(length)
        return status, retry, keep

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Keep-alive connections to one server; a new one opens when all are busy."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._idle: list[_Conn] = []

    async def send(self, raw: bytes) -> tuple[int, float | None]:
        conn = self._idle.pop() if self._idle else None
        while conn is not None and time.monotonic() - conn.used_at > _IDLE_S:
            conn.close()
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = _Conn(*await asyncio.open_connection(self._host, self._port))
        try:
            status, retry, keep = await conn.roundtrip(raw)
        except BaseException:
            conn.close()
            raise
        if keep:
            conn.used_at = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        return status, retry

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _one(pool: Pool, raw: bytes, due: float, outcome: Outcome, began: float) -> None:
    try:
        status, retry = await asyncio.wait_for(pool.send(raw), 30)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        outcome.errors += 1
        return
    outcome.latencies.append(time.perf_counter() - due)
    outcome.due_s.append(due - began)
    outcome.statuses.append(status)
    outcome.retry_after.append(retry is not None)


async def open_loop(target: Target, *, rate: float, duration_s: float, start_at: float) -> Outcome:
    """``rate`` requests a second for ``duration_s``, whatever the answers (open loop)."""
    pool, raw, outcome = Pool(target.host, target.port), target.raw(), Outcome()
    # Every stream starts on the same wall-clock instant, whatever its process start-up took.
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    total = int(rate * duration_s)
    sent = 0
    while sent < total:
        now = time.perf_counter()
        due_count = min(total, int((now - began) * rate) + 1)
        while sent < due_count:  # send everything due (several per wake-up at high rates)
            task = asyncio.ensure_future(_one(pool, raw, began + sent / rate, outcome, began))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(max(0.0, began + sent / rate - time.perf_counter()))
    if tasks:
        await asyncio.gather(*tasks)
    outcome.wall_s = time.perf_counter() - began
    pool.close()
    return outcome


async def closed_loop(target: Target, *, concurrency: int, duration_s: float) -> Outcome:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    pool, raw, outcome = Pool(target.host, target.port), target.raw(), Outcome()
    began = time.perf_counter()

    async def client() -> None:
        while time.perf_counter() - began < duration_s:
            await _one(pool, raw, time.perf_counter(), outcome, began)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    outcome.wall_s = time.perf_counter() - began
    pool.close()
    return outcome


def run_stream(kind: str, target: Target, options: dict[str, float]) -> Outcome:
    """Process entry point: run one stream (``open`` or ``closed``) on a fresh event loop."""
    if kind == "open":
        coro = open_loop(
            target, rate=options["rate"], duration_s=options["duration_s"],
            start_at=options["start_at"],
        )  # fmt: skip
    else:
        coro = closed_loop(
            target, concurrency=int(options["concurrency"]), duration_s=options["duration_s"]
        )
    return asyncio.run(coro)


@dataclass(frozen=True)
class FirstCall:
    """One storm call: its first answer, and when (if ever) a retry got a 200."""

    status: int  # -1: socket error
    retry_after_s: float | None
    first_s: float  # seconds from the storm's start to the first answer
    served_s: float | None
    attempts: int
    first_latency_s: float = 0.0  # the first attempt's own time, from sending to its answer


async def storm(targets: list[Target], *, deadline_s: float, clients: int = 0) -> list[FirstCall]:
    """Every target at once, each on its own connection, or at most ``clients`` requests in
    flight (0: no limit); refused ones retry after the Retry-After they were given (1 s when
    none), until served or ``deadline_s`` passes."""
    began = time.perf_counter()
    slots = asyncio.Semaphore(clients or len(targets) or 1)

    async def attempt(target: Target) -> tuple[int, float | None, float]:
        async with slots:
            pool = Pool(target.host, target.port)
            sent = time.perf_counter()
            try:
                status, retry = await asyncio.wait_for(pool.send(target.raw()), 60)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                status, retry = -1, None
            finally:
                pool.close()
            return status, retry, time.perf_counter() - sent

    async def call(target: Target) -> FirstCall:
        status, first_retry, latency = await attempt(target)
        first_s = time.perf_counter() - began
        answer, retry, attempts = status, first_retry, 1
        while answer != 200 and time.perf_counter() - began < deadline_s:
            await asyncio.sleep(retry if retry is not None else 1.0)
            answer, retry, _ = await attempt(target)
            attempts += 1
        served = time.perf_counter() - began if answer == 200 else None
        return FirstCall(status, first_retry, first_s, served, attempts, latency)

    return list(await asyncio.gather(*(call(t) for t in targets)))
