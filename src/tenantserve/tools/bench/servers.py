"""Servers under test as child processes on loopback: ``tenantserve serve`` and the raw floor."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 600.0  # the floor creates every session before its port opens


@dataclass(frozen=True)
class Served:
    """A running server: its base URL and its process id (for RSS and thread samples)."""

    url: str
    pid: int
    log_path: Path


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def served_tenantserve(
    store: Path | str,
    *,
    budget: str,
    log_path: Path,
    cache_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    src: Path | None = None,
) -> Iterator[Served]:
    """Run ``tenantserve serve`` on a free loopback port until the block ends; with ``src``,
    the server of that source tree (another checkout's ``src/``, for a before-and-after)."""
    port = free_port()
    cmd = [sys.executable, "-m", "tenantserve", "serve", "--store", str(store),
           "--host", "127.0.0.1", "--port", str(port), "--memory-budget", budget,
           "--log-level", "warning"]  # fmt: skip
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    with _spawn([*cmd, *extra_args], port, log_path, env) as served:
        yield served


@contextlib.contextmanager
def served_floor(store: Path, *, log_path: Path, threads: int | None = None) -> Iterator[Served]:
    """Run the raw floor server (``tenantserve bench floor``) until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "tenantserve", "bench", "floor", "--store", str(store),
           "--port", str(port)]  # fmt: skip
    if threads is not None:
        cmd += ["--threads", str(threads)]
    with _spawn(cmd, port, log_path) as served:
        yield served


@contextlib.contextmanager
def _spawn(
    cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None
) -> Iterator[Served]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log_path)
        yield Served(url, proc.pid, log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {READY_TIMEOUT_S:.0f} s")
