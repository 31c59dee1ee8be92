"""The disk cache: one build per key, atomic entries, LRU eviction within a byte bound."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tenantserve.errors import LoadFailed
from tenantserve.store.disk_cache import DiskCache


def _writer(nbytes: int, calls: list[str] | None = None) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        if calls is not None:
            calls.append(folder.name)
        (folder / "model.onnx").write_bytes(bytes(nbytes))

    return build


def test_builds_once_then_hits(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)
    calls: list[str] = []
    entry, built = cache.get_or_create("k1", _writer(10, calls))
    again, built_again = cache.get_or_create("k1", _writer(10, calls))
    assert (built, built_again) == (True, False)
    assert len(calls) == 1
    assert again.path == entry.path == tmp_path / "k1"
    assert (entry.path / "model.onnx").stat().st_size == 10
    assert entry.nbytes == 10
    assert cache.used_bytes == 10
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_failed_build_keeps_nothing(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"half")
        raise RuntimeError("network gone")

    with pytest.raises(RuntimeError, match="network gone"):
        cache.get_or_create("k1", broken)
    assert cache.get("k1") is None
    assert not (tmp_path / "k1").exists()
    assert list((tmp_path / ".tmp").iterdir()) == []
    _entry, built = cache.get_or_create("k1", _writer(5))
    assert built


def test_least_recently_used_is_evicted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=250, min_age_s=0)
    for key in ("a", "b"):
        cache.get_or_create(key, _writer(100))
    assert cache.get("a") is not None  # a is now more recent than b
    cache.get_or_create("c", _writer(100))
    assert cache.keys() == ["a", "c"]
    assert not (tmp_path / "b").exists()
    assert cache.used_bytes == 200


def test_recently_handed_out_entries_are_not_evicted(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=150, min_age_s=3600)
    cache.get_or_create("a", _writer(100))
    cache.get_or_create("b", _writer(100))
    # Over the bound for a while rather than deleting a folder a caller may be loading.
    assert sorted(cache.keys()) == ["a", "b"]
    assert (tmp_path / "a" / "model.onnx").exists()


def test_entry_larger_than_the_cache_is_refused(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=50, min_age_s=0)
    cache.get_or_create("small", _writer(10))
    with pytest.raises(LoadFailed, match="more than the disk cache"):
        cache.get_or_create("huge", _writer(100))
    assert cache.keys() == ["small"]
    assert not (tmp_path / "huge").exists()


def test_concurrent_fetches_of_one_key_build_once(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=10_000)
    calls: list[str] = []
    release = threading.Event()

    def slow(folder: Path) -> None:
        calls.append(folder.name)
        release.wait(timeout=10)
        (folder / "model.onnx").write_bytes(b"x")

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(cache.get_or_create, "same", slow) for _ in range(8)]
        release.set()
        results = [future.result(timeout=30) for future in futures]
    assert len(calls) == 1
    assert sum(built for _entry, built in results) == 1
    assert {entry.path for entry, _built in results} == {tmp_path / "same"}


def test_different_keys_build_in_parallel(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=10_000)
    # Each build waits for the other to start: a cache-wide lock would break the barrier.
    both_started = threading.Barrier(2, timeout=10)

    def build(folder: Path) -> None:
        both_started.wait()
        (folder / "model.onnx").write_bytes(b"x")

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(cache.get_or_create, key, build) for key in ("one", "two")]
        assert all(future.result(timeout=30)[1] for future in futures)


def test_restart_adopts_entries_and_clears_leftovers(tmp_path: Path) -> None:
    first = DiskCache(tmp_path, max_bytes=1000)
    first.get_or_create("kept", _writer(42))
    leftover = tmp_path / ".tmp" / "crashed-build"
    leftover.mkdir(parents=True)
    (leftover / "half.bin").write_bytes(b"half")
    second = DiskCache(tmp_path, max_bytes=1000)
    entry = second.get("kept")
    assert entry is not None
    assert entry.nbytes == 42
    assert not leftover.exists()


def test_discard_and_key_validation(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)
    cache.get_or_create("gone", _writer(1))
    cache.discard("gone")
    assert cache.get("gone") is None
    assert not (tmp_path / "gone").exists()
    for bad in ("", "../x", "a/b", ".tmp", "x" * 200):
        with pytest.raises(ValueError, match="keys"):
            cache.get(bad)


def test_constructor_does_no_io(tmp_path: Path) -> None:
    DiskCache(tmp_path / "not-yet", max_bytes=10)
    assert not (tmp_path / "not-yet").exists()


def test_a_hit_marks_its_folder_for_restarts_at_most_once_a_minute(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, max_bytes=1000)
    for key in ("a", "b"):
        cache.get_or_create(key, _writer(1))
    os.utime(tmp_path / "a", (1000, 1000))
    os.utime(tmp_path / "b", (2000, 2000))
    restarted = DiskCache(tmp_path, max_bytes=1000)  # order from the folders' mtimes: a, b
    assert restarted.get("a") is not None
    assert (tmp_path / "a").stat().st_mtime > 2000  # its first hit since the restart: marked
    os.utime(tmp_path / "a", (1000, 1000))
    assert restarted.get("a") is not None
    assert (tmp_path / "a").stat().st_mtime == 1000  # again within the minute: in memory only
    assert restarted.keys()[-1] == "a"  # the order in memory is exact
