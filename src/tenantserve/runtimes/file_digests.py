"""FileDigests: a file's sha256, hashed once per file identity."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

_REMEMBERED = 100_000  # identities kept (about 100 bytes each), least recently used dropped


class FileDigests:
    """sha256 of files, remembered by identity (device, inode, size, mtime): a file replaced
    or rewritten is hashed again, an unchanged one never twice. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[tuple[int, int, int, int], str] = OrderedDict()

    def of(self, path: Path) -> str:
        """``path``'s sha256 (hex). Raises OSError when it cannot be read."""
        st = path.stat()
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._known.get(identity)
        if known is not None:
            return known
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        with self._lock:
            self._known[identity] = digest
            self._known.move_to_end(identity)
            if len(self._known) > _REMEMBERED:
                self._known.popitem(last=False)
        return digest
