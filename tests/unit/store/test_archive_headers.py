"""Header bombs: a small .tar.gz whose headers declare huge or endless data is refused early.

Each hostile archive is a few hundred KB on disk (gzip of a repeated byte is ~1000:1) and
would make tarfile read tens of MiB into memory; the peak Python allocation while refusing it
must stay within a few MiB.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tenantserve.errors import LoadFailed
from tenantserve.store import tar_stream
from tenantserve.store.archive import extract_archive
from tenantserve.store.tar_stream import CountedStream

BLOCK = tarfile.BLOCKSIZE
BIG = 64 << 20
FEW_MIB = 4 << 20


def _header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(tarfile.GNU_FORMAT)


def _padded(chunks: Iterable[bytes], size: int) -> Iterable[bytes]:
    yield from chunks
    yield bytes(-size % BLOCK)


def _repeat(unit: bytes, size: int) -> Iterable[bytes]:
    chunk = unit * (1 << 20)
    left = size
    while left > 0:
        yield chunk[: min(left, len(chunk))]
        left -= len(chunk)


def _model_member() -> list[bytes]:
    return [_header("model.onnx", tarfile.REGTYPE, 7), b"weights" + bytes(BLOCK - 7)]


def _write(path: Path, parts: Iterable[bytes], *, on_disk: int = 1 << 20) -> Path:
    with gzip.open(path, "wb", compresslevel=9) as out:
        for part in parts:
            out.write(part)
        out.write(bytes(2 * BLOCK))
    assert path.stat().st_size < on_disk
    return path


def _refused_with_peak(archive: Path, dest: Path, **caps: int) -> tuple[LoadFailed, int]:
    tracemalloc.start()
    try:
        with pytest.raises(LoadFailed) as info:
            extract_archive(archive, dest, max_bytes=caps.get("max_bytes", 1 << 30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.unpack-*"))
    return info.value, peak


def _one_huge_header(kind: bytes) -> Callable[[], Iterable[bytes]]:
    def parts() -> Iterable[bytes]:
        yield _header("././@LongLink", kind, BIG)
        yield from _padded(_repeat(b"a", BIG), BIG)
        yield from _model_member()

    return parts


@pytest.mark.parametrize(
    "kind",
    [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE],
    ids=["gnu-long-name", "gnu-long-link", "pax", "pax-global"],
)
def test_a_huge_header_is_refused_before_it_is_read(tmp_path: Path, kind: bytes) -> None:
    archive = _write(tmp_path / "bomb.tar.gz", _one_huge_header(kind)())
    error, peak = _refused_with_peak(archive, tmp_path / "dest")
    assert f"{BIG}-byte long-name, long-link or PAX header" in str(error)
    assert peak < FEW_MIB, f"refusing the archive allocated {peak} bytes"


def test_chained_long_name_headers_are_refused(tmp_path: Path) -> None:
    name = b"x" * 200 + b"\x00"
    one = [_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, len(name)), name]
    parts = [*[part for _ in range(5000) for part in _padded(one, len(name))], *_model_member()]
    error, peak = _refused_with_peak(_write(tmp_path / "chain.tar.gz", parts), tmp_path / "d")
    assert "chains more than 4 extended headers" in str(error)
    assert peak < FEW_MIB


def _with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\x00" % (sum(block))
    return bytes(block)


def test_a_gnu_sparse_map_is_refused_before_it_is_read(tmp_path: Path) -> None:
    head = bytearray(_header("model.onnx", tarfile.GNUTYPE_SPARSE, 0))
    head[482] = 1  # "more sparse map blocks follow"
    entry = b"%011o\x00" % 1 * 2
    extension = bytearray(entry * 21 + bytes(BLOCK - 24 * 21))
    extension[504] = 1
    parts = [_with_checksum(head), *[bytes(extension)] * 30_000]
    error, peak = _refused_with_peak(_write(tmp_path / "sparse.tar.gz", parts), tmp_path / "d")
    assert "sparse" in str(error)
    assert peak < FEW_MIB


def _pax(records: dict[str, str]) -> list[bytes]:
    data = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record) + 1
        while len(str(length)) + len(record) != length:
            length += 1
        data += str(length).encode() + record
    return list(_padded([_header("././@PaxHeader", tarfile.XHDTYPE, len(data)), data], len(data)))


def test_a_pax_sparse_map_is_refused_before_it_is_read(tmp_path: Path) -> None:
    map_size = 8 << 20
    parts = [
        *_pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "m.onnx"}),
        _header("model.onnx", tarfile.REGTYPE, map_size),
        b"100000000\n",
        *_padded(_repeat(b"123456789\n", map_size - 10), map_size),
    ]
    error, peak = _refused_with_peak(_write(tmp_path / "sparse.tar.gz", parts), tmp_path / "d")
    assert "sparse" in str(error)
    assert peak < FEW_MIB


def test_pax_records_of_passed_members_are_not_kept(tmp_path: Path) -> None:
    # 120 members, each with a 60 KB PAX comment: kept, as tarfile's iterator keeps them, 7 MB.
    records = _pax({"comment": "a" * 60_000})
    parts = [part for i in range(120) for part in (*records, _header(f"f{i}", tarfile.REGTYPE, 0))]
    parts += [_header("last", tarfile.REGTYPE, 1 << 20), *_padded(_repeat(b"a", 1 << 20), 1 << 20)]
    error, peak = _refused_with_peak(
        _write(tmp_path / "records.tar.gz", parts), tmp_path / "d", max_bytes=1000
    )
    assert "more than 1000 bytes" in str(error)
    assert peak < FEW_MIB


def test_all_headers_together_are_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tar_stream, "MAX_HEADER_BYTES_TOTAL", 4096)
    members = []
    for i in range(40):
        info = tarfile.TarInfo(f"{'d' * 150}/{i}")
        members.append(info)
    archive = tmp_path / "names.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(LoadFailed, match="4096 bytes in all"):
        extract_archive(archive, tmp_path / "d", max_bytes=1 << 20)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_unicode_names_and_a_global_header_still_unpack(tmp_path: Path, fmt: int) -> None:
    long_name = "/".join(["segment-" + "é" * 40] * 6) + "/model.onnx"
    archive = tmp_path / "ok.tar.gz"
    headers = {"comment": "0f50398"} if fmt == tarfile.PAX_FORMAT else None
    with tarfile.open(archive, "w:gz", format=fmt, pax_headers=headers) as tar:
        info = tarfile.TarInfo(long_name)
        info.size = 7
        tar.addfile(info, io.BytesIO(b"weights"))
    extract_archive(archive, tmp_path / "out", max_bytes=1 << 20)
    assert (tmp_path / "out" / long_name).read_bytes() == b"weights"


def test_the_counted_stream_stops_one_byte_past_its_limit() -> None:
    stream = CountedStream(io.BytesIO(bytes(100)), limit=64)
    assert len(stream.read(64)) == 64
    with pytest.raises(LoadFailed, match="more than 64 bytes"):
        stream.read(1 << 30)
    assert stream.count == 65
