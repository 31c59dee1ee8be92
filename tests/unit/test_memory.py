"""The process's resident bytes, read as the cache reads them on every load."""

from __future__ import annotations

import mmap
import os

import psutil

from tenantserve import memory


def _fresh_pages(size: int) -> mmap.mmap:
    """``size`` bytes of pages new to the process, each written: a heap allocation may reuse
    freed memory still resident (seen in the full suite), and would not grow the reading."""
    pages = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for offset in range(0, size, mmap.PAGESIZE):
        pages[offset] = 1
    return pages


def test_readings_agree_with_psutil_and_follow_the_heap() -> None:
    info = psutil.Process().memory_info()
    slack = 4 * 1024 * 1024  # the interpreter allocates between the two readings
    assert abs(memory.rss_bytes() - info.rss) < slack
    assert abs(memory.anon_bytes() - (info.rss - info.shared)) < slack
    before = memory.anon_bytes()
    held = _fresh_pages(64 * 1024 * 1024)
    assert memory.anon_bytes() - before > 60 * 1024 * 1024
    assert memory.rss_bytes() >= memory.anon_bytes()
    del held


def test_a_forked_child_reads_its_own_process() -> None:
    memory.rss_bytes()  # the parent's descriptor is open before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: grow, then report whether its reading saw it
        before = memory.anon_bytes()
        held = _fresh_pages(64 * 1024 * 1024)
        grown = memory.anon_bytes() - before > 60 * 1024 * 1024
        os.write(write, b"1" if grown and held else b"0")
        os._exit(0)
    os.close(write)
    parent_before = memory.anon_bytes()
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert memory.anon_bytes() - parent_before < 32 * 1024 * 1024  # not the child's growth
