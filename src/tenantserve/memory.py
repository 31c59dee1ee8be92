"""What the process really holds: resident set size, and giving freed heap back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading

import psutil

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks from this size on get their own mapping, returned to the OS the moment they are freed.
# glibc's default is 128 KiB, but it raises the threshold to the size of every mapped block
# freed (up to 32 MiB), after which a closed session's buffers stay on the heap: loading and
# closing 200 ONNX sessions of 10.56 MB, 8 resident at a time, left 368 MB resident without a
# trim; with the threshold fixed, 1.8 MB (benchmarks/bench_loads.py, allocator section).
MMAP_THRESHOLD_BYTES = 256 * 1024
# free() gives the top of the heap back once this much of it is free.
TRIM_THRESHOLD_BYTES = 1024 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Make glibc return freed blocks to the OS as they are freed, without ``malloc_trim``:
    fixed mmap and trim thresholds (see ``MMAP_THRESHOLD_BYTES``). Returns whether it could
    (False where there is no glibc)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


def trim() -> None:
    """Return freed heap to the OS.

    glibc keeps freed session memory in its arenas: 20 evicted 10 MB sessions were seen to keep
    270-410 MB resident without ``malloc_trim(0)``. A no-op where there is no glibc.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def rss_bytes() -> int:
    """Resident set size of this process, in bytes."""
    return _resident()[0]


def anon_bytes() -> int:
    """Resident bytes that are not file pages: the heap and anonymous mappings. A model file
    mapped by its session shows in ``rss_bytes`` but not here."""
    rss, shared = _resident()
    return rss - shared


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm: tuple[int, int] | None = None  # (pid, descriptor of /proc/self/statm; -1: none)
_process: psutil.Process | None = None


def _resident() -> tuple[int, int]:
    """(resident, resident file-backed and shared) bytes. On Linux one ``pread`` of
    ``/proc/self/statm`` on a descriptor kept open: psutil opens the file for every reading,
    and the cache takes several a load on the event loop (5% of its time in the
    quarter-budget run). Elsewhere psutil's reading."""
    global _statm
    pid = os.getpid()
    if _statm is None or _statm[0] != pid:  # first use, or a forked child
        try:
            _statm = (pid, os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:  # not Linux: asked once, not on every reading
            _statm = (pid, -1)
    if _statm[1] < 0:
        info = _this_process().memory_info()
        return int(info.rss), int(getattr(info, "shared", 0))
    fields = os.pread(_statm[1], 256, 0).split()
    return int(fields[1]) * _PAGE_BYTES, int(fields[2]) * _PAGE_BYTES


def _this_process() -> psutil.Process:
    # psutil.Process() reads /proc for the process's start time each time it is made: kept.
    # Made anew in a forked child.
    global _process
    if _process is None or _process.pid != os.getpid():
        _process = psutil.Process()
    return _process


def lower_thread_priority(nice: int) -> None:
    """Lower the calling thread's OS priority by ``nice`` (Linux: a thread's own nice value;
    elsewhere a no-op). A thread can lower its priority, not raise it back."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        return
