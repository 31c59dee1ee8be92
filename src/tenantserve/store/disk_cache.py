"""Size-bounded local folder of artifact copies: build in a temp folder, rename, evict LRU."""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tenantserve.errors import LoadFailed

DEFAULT_MIN_AGE_S = 30.0
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_TMP_DIR = ".tmp"
_MARK_EVERY_S = 60.0  # how often a used entry's folder mtime is set (restarts read it)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One artifact copy: its folder and the bytes its files take."""

    key: str
    path: Path
    nbytes: int


@dataclass(slots=True)
class _Record:
    nbytes: int
    last_access_s: float  # time.monotonic() of the last hand-out
    tick: int  # strict LRU order; monotonic clocks can tie within a test
    marked_s: float = -math.inf  # time.monotonic() its folder's mtime was last set


@dataclass(slots=True)
class _KeyLock:
    lock: threading.Lock
    users: int = 0


class DiskCache:
    """A folder of artifact copies, bounded in bytes, evicting the least recently used.

    Each entry is one sub-folder named by its key. ``get_or_create`` builds a missing entry
    in a temporary folder and renames it into place, so a crash never leaves a half entry
    that looks whole. Callers on different keys work in parallel; callers on one key share a
    single build. An entry handed out less than ``min_age_s`` ago is never evicted, since its
    caller may still be reading it; the cache may then stay over ``max_bytes`` for a while.

    The folder is owned by one process: on first use, leftovers of a crashed build are removed
    and existing entries are adopted in the order of their modification times.
    """

    def __init__(self, root: Path, *, max_bytes: int, min_age_s: float = DEFAULT_MIN_AGE_S):
        self.root = root
        self.max_bytes = max_bytes
        self.min_age_s = min_age_s
        self._state = threading.Lock()
        self._records: dict[str, _Record] | None = None
        self._key_locks: dict[str, _KeyLock] = {}
        self._tick = 0

    @property
    def used_bytes(self) -> int:
        """Bytes held by all entries."""
        with self._state:
            return sum(record.nbytes for record in self._load_index().values())

    def keys(self) -> list[str]:
        """Keys of the entries, least recently used first."""
        with self._state:
            records = self._load_index()
            return sorted(records, key=lambda key: records[key].tick)

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, marked as just used, or ``None``."""
        _check_key(key)
        with self._state:
            found, mark = self._touch(key)
        if mark and found is not None:
            _mark_used(found.path)
        return found

    def get_or_create(self, key: str, build: Callable[[Path], None]) -> tuple[CacheEntry, bool]:
        """The entry for ``key``; if missing, ``build(folder)`` fills a new empty folder.

        Returns:
            The entry, and whether this call built it.

        Raises:
            LoadFailed: the built entry is larger than the whole cache. Whatever ``build``
                raises propagates, and nothing of that attempt is kept.
        """
        _check_key(key)
        with self._key_lock(key):
            with self._state:
                found, mark = self._touch(key)
            if found is not None:
                if mark:
                    _mark_used(found.path)
                return found, False
            work = self.root / _TMP_DIR / f"{key}-{secrets.token_hex(6)}"
            work.mkdir(parents=True, mode=0o700)
            try:
                build(work)
                nbytes = tree_bytes(work)
                if nbytes > self.max_bytes:
                    raise LoadFailed(
                        f"artifact takes {nbytes} bytes on disk, more than the disk cache's "
                        f"{self.max_bytes}"
                    )
                final = self.root / key
                _remove_tree(final)  # an unindexed leftover; we hold this key's lock
                os.rename(work, final)
            except BaseException:
                _remove_tree(work)
                raise
            with self._state:
                now = time.monotonic()
                self._load_index()[key] = _Record(nbytes, now, self._next(), marked_s=now)
                victims = self._pick_victims(keep=key)
            for victim in victims:
                _remove_tree(victim)
            return CacheEntry(key, final, nbytes), True

    def discard(self, key: str) -> None:
        """Remove the entry for ``key`` if there is one."""
        _check_key(key)
        with self._key_lock(key):
            with self._state:
                self._load_index().pop(key, None)
            _remove_tree(self.root / key)

    def _touch(self, key: str) -> tuple[CacheEntry | None, bool]:
        """The entry, marked used in memory, and whether its folder's mtime is due a mark:
        that order only matters across restarts, so once a minute at most (a load of a
        cached model paid a system call, and a wait for the GIL after it, for each mark)."""
        record = self._load_index().get(key)
        if record is None:
            return None, False
        now = time.monotonic()
        record.last_access_s = now
        record.tick = self._next()
        mark = now - record.marked_s >= _MARK_EVERY_S
        if mark:
            record.marked_s = now
        return CacheEntry(key, self.root / key, record.nbytes), mark

    def _pick_victims(self, *, keep: str) -> list[Path]:
        records = self._load_index()
        used = sum(record.nbytes for record in records.values())
        newest_allowed = time.monotonic() - self.min_age_s
        candidates = sorted(
            (
                key
                for key, record in records.items()
                # A key being built or read under its lock is in use: not a victim.
                if key != keep
                and key not in self._key_locks
                and record.last_access_s <= newest_allowed
            ),
            key=lambda key: records[key].tick,
        )
        victims: list[Path] = []
        for key in candidates:
            if used <= self.max_bytes:
                break
            used -= records.pop(key).nbytes
            # Rename under the lock so the entry vanishes at once; delete the files outside it.
            doomed = self.root / _TMP_DIR / f"evicted-{key}-{secrets.token_hex(6)}"
            try:
                os.rename(self.root / key, doomed)
            except FileNotFoundError:
                continue
            victims.append(doomed)
        return victims

    def _next(self) -> int:
        self._tick += 1
        return self._tick

    def _load_index(self) -> dict[str, _Record]:
        # Lazy, so that the constructor does no I/O; called with self._state held.
        if self._records is not None:
            return self._records
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_tree(self.root / _TMP_DIR)
        found: list[tuple[float, str, int]] = []
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink() and _KEY.fullmatch(entry.name):
                found.append((entry.stat().st_mtime, entry.name, tree_bytes(entry)))
        records: dict[str, _Record] = {}
        # Adopted entries count as long unused: their age is unknown to this process.
        for _mtime, key, nbytes in sorted(found):
            records[key] = _Record(nbytes, float("-inf"), self._next())
        self._records = records
        return records

    @contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        with self._state:
            held = self._key_locks.setdefault(key, _KeyLock(threading.Lock()))
            held.users += 1
        try:
            with held.lock:
                yield
        finally:
            with self._state:
                held.users -= 1
                if held.users == 0:
                    del self._key_locks[key]


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError("disk cache keys are 1-128 letters, digits, '_' or '-'")


def tree_bytes(folder: Path) -> int:
    """Bytes held by the files under ``folder`` (links are counted, never followed)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _mark_used(path: Path) -> None:
    # The folder's mtime carries the LRU order across restarts; best effort only.
    with contextlib.suppress(OSError):
        os.utime(path)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
