"""Read a ``.tar.gz`` as a stream with bounds on what its headers may make us read or hold.

tarfile reads a GNU long-name or long-link header, and a PAX header, whole into memory, and
follows chains of them recursively: a few hundred KB of gzip can declare one header of
gigabytes. The caps here apply to the size declared in each 512-byte header block, before
tarfile reads what it declares; the decompressed stream is counted as well, a backstop for
anything the header checks do not foresee.
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from tenantserve.errors import LoadFailed

# One long name, long link or PAX header (PATH_MAX is 4096; real PAX headers are a few
# hundred bytes), all of them in one archive, and how many may precede one member
# (a global header, a PAX header, a long name and a long link).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADER_BYTES_TOTAL = 8 * 1024 * 1024
MAX_CHAINED_HEADERS = 4
_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
# Per member: its header block and padding, and those of each extended header before it.
_MEMBER_OVERHEAD = (MAX_CHAINED_HEADERS + 1) * 2 * tarfile.BLOCKSIZE


@contextmanager
def open_tar_stream(
    archive: Path, *, max_bytes: int, max_members: int
) -> Iterator[tuple[tarfile.TarFile, Iterator[tarfile.TarInfo]]]:
    """The archive opened front to back, and an iterator over its members.

    The decompressed stream may hold ``max_bytes`` of contents plus the headers and padding of
    ``max_members`` members; headers are bounded as described above. Members are not kept once
    passed, unlike tarfile's own iterator, which holds every one (and its PAX records).

    Raises:
        LoadFailed: a header or the stream is over its bound, or the archive holds a sparse
            member (whose map tarfile would read unbounded).
    """
    limit = max_bytes + (max_members + 1) * _MEMBER_OVERHEAD + MAX_HEADER_BYTES_TOTAL
    limit += 2 * tarfile.RECORDSIZE  # the end-of-archive blocks and tarfile's read-ahead
    with archive.open("rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
        stream = CountedStream(unzipped, limit)
        tarinfo = _bounded_tarinfo(_HeaderBudget())
        # "r|": read once, front to back, never seek; the gzip layer is ours so it is counted.
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=tarinfo) as tar:  # type: ignore[call-overload]
            yield tar, _members(tar)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class CountedStream:
    """A reader that raises once more than ``limit`` bytes were read through it."""

    def __init__(self, source: _Readable, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        # Never ask for more than one byte past the limit, so the overflow costs nothing.
        room = self._limit - self.count + 1
        data = self._source.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self._limit:
            raise LoadFailed(f"archive unpacks to more than {self._limit} bytes with its headers")
        return data


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        # Stream mode keeps every member (and its PAX records) for a later lookup we never do.
        tar.members.clear()  # type: ignore[attr-defined]  # not in typeshed
        yield member


class _HeaderBudget:
    """What the extended headers of one archive have used so far."""

    def __init__(self) -> None:
        self.chained = 0
        self.total = 0
        self.global_total = 0

    def check(self, info: tarfile.TarInfo) -> None:
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise _sparse()
        if info.type not in _EXTENDED:
            self.chained = 0
            return
        self.chained += 1
        self.total += info.size
        if info.type == tarfile.XGLTYPE:
            # Global records are kept for the rest of the archive, so they share one cap.
            self.global_total += info.size
        if info.size > MAX_HEADER_BYTES or self.global_total > MAX_HEADER_BYTES:
            raise LoadFailed(
                f"archive has a {info.size}-byte long-name, long-link or PAX header; "
                f"the limit is {MAX_HEADER_BYTES} bytes"
            )
        if self.chained > MAX_CHAINED_HEADERS:
            raise LoadFailed(
                f"archive chains more than {MAX_CHAINED_HEADERS} extended headers before a member"
            )
        if self.total > MAX_HEADER_BYTES_TOTAL:
            raise LoadFailed(
                f"archive's long-name and PAX headers pass {MAX_HEADER_BYTES_TOTAL} bytes in all"
            )


def _sparse() -> LoadFailed:
    return LoadFailed("archive holds a sparse member; sparse files are not allowed")


def _bounded_tarinfo(budget: _HeaderBudget) -> type[tarfile.TarInfo]:
    # _proc_member is tarfile's documented hook for subclasses ("can be overridden"); it runs
    # once the 512-byte block is parsed and before any data the block declares is read.
    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            budget.check(self)
            proc = super()._proc_member  # type: ignore[misc]
            result: tarfile.TarInfo = proc(tar)
            return result

        # PAX sparse maps: version 1.0 reads its map from the data blocks without a bound.
        def _proc_gnusparse_00(self, *_args: object) -> None:
            raise _sparse()

        def _proc_gnusparse_01(self, *_args: object) -> None:
            raise _sparse()

        def _proc_gnusparse_10(self, *_args: object) -> None:
            raise _sparse()

    return BoundedTarInfo
