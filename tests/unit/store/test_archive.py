"""Safe unpacking of model.tar.gz: good layouts work, every escape attempt is refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tenantserve.errors import LoadFailed
from tenantserve.store.archive import extract_archive, find_artifact_dir

Member = tuple[tarfile.TarInfo, bytes | None]


def _file(name: str, data: bytes = b"weights") -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def _write_tar(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def test_files_at_top_level(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "m.tar.gz", [_file("model.onnx"), _file("model.json", b"{}")])
    dest = tmp_path / "out"
    extract_archive(archive, dest, max_bytes=1024)
    assert (dest / "model.onnx").read_bytes() == b"weights"
    assert find_artifact_dir(dest) == dest


def test_dot_slash_names_and_one_top_level_folder(tmp_path: Path) -> None:
    members = [
        _special("./macros", tarfile.DIRTYPE),
        _file("./macros/model.onnx"),
        _file("__MACOSX/._model.onnx", b"junk"),
    ]
    archive = _write_tar(tmp_path / "m.tar.gz", members)
    dest = tmp_path / "out"
    extract_archive(archive, dest, max_bytes=1024)
    assert find_artifact_dir(dest) == dest / "macros"


def test_archive_without_model_file_is_refused(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "m.tar.gz", [_file("a/notes.txt"), _file("b/model.onnx")])
    dest = tmp_path / "out"
    extract_archive(archive, dest, max_bytes=1024)
    with pytest.raises(LoadFailed, match=r"no model\.onnx"):
        find_artifact_dir(dest)


def _malicious(tmp_path: Path) -> dict[str, list[Member]]:
    outside = tmp_path / "outside.txt"
    return {
        "dotdot": [_file("../evil.txt")],
        "dotdot-nested": [_file("a/../../evil.txt")],
        "absolute": [_file(str(tmp_path / "abs-evil.txt"))],
        "symlink-out": [_special("model.onnx", tarfile.SYMTYPE, str(outside))],
        "symlink-relative": [_special("link", tarfile.SYMTYPE, "../../.."), _file("link/x")],
        "hardlink-out": [_special("model.onnx", tarfile.LNKTYPE, str(outside))],
        "hardlink-relative": [_special("model.onnx", tarfile.LNKTYPE, "../outside.txt")],
        "char-device": [_special("null", tarfile.CHRTYPE)],
        "block-device": [_special("disk", tarfile.BLKTYPE)],
        "fifo": [_special("pipe", tarfile.FIFOTYPE)],
        "backslash": [_file("..\\evil.txt")],
    }


@pytest.mark.parametrize(
    "case",
    [
        "dotdot",
        "dotdot-nested",
        "absolute",
        "symlink-out",
        "symlink-relative",
        "hardlink-out",
        "hardlink-relative",
        "char-device",
        "block-device",
        "fifo",
        "backslash",
    ],
)
def test_malicious_member_is_refused_and_writes_nothing(tmp_path: Path, case: str) -> None:
    (tmp_path / "outside.txt").write_text("keep me")
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    archive = _write_tar(
        tmp_path / "evil.tar.gz", [_file("model.onnx"), *_malicious(tmp_path)[case]]
    )
    before = _tree(tmp_path)
    with pytest.raises(LoadFailed) as info:
        extract_archive(archive, work / "dest", max_bytes=1 << 20)
    assert _tree(tmp_path) == before  # no dest, no staging leftovers, nothing outside
    assert (tmp_path / "outside.txt").read_text() == "keep me"
    assert str(tmp_path) not in str(info.value)


def test_zip_bomb_is_stopped_at_the_cap(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 1 << 20  # small on the wire, 64 MiB unpacked
    before = _tree(tmp_path)
    with pytest.raises(LoadFailed, match="more than 1048576 bytes"):
        extract_archive(bomb, tmp_path / "dest", max_bytes=1 << 20)
    assert _tree(tmp_path) == before


def test_many_small_members_over_the_cap(tmp_path: Path) -> None:
    members = [_file(f"part{i}.bin", bytes(400)) for i in range(10)]
    archive = _write_tar(tmp_path / "m.tar.gz", members)
    with pytest.raises(LoadFailed, match="more than 1000 bytes"):
        extract_archive(archive, tmp_path / "dest", max_bytes=1000)
    assert not (tmp_path / "dest").exists()


def test_too_many_members(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "m.tar.gz", [_file(f"f{i}") for i in range(10)])
    with pytest.raises(LoadFailed, match="more than 5 members"):
        extract_archive(archive, tmp_path / "dest", max_bytes=1 << 20, max_members=5)


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    archive = _write_tar(tmp_path / "m.tar.gz", [_file("model.onnx"), _file("model.onnx", b"x")])
    with pytest.raises(LoadFailed, match="twice"):
        extract_archive(archive, tmp_path / "dest", max_bytes=1 << 20)


@pytest.mark.parametrize("data", [b"not a tarball at all", b"\x1f\x8b\x08\x00truncated"])
def test_not_a_tar_gz(tmp_path: Path, data: bytes) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(LoadFailed, match="not a valid") as info:
        extract_archive(archive, tmp_path / "dest", max_bytes=1 << 20)
    assert str(tmp_path) not in str(info.value)
    assert not (tmp_path / "dest").exists()


def test_truncated_archive_leaves_nothing(tmp_path: Path) -> None:
    good = _write_tar(tmp_path / "good.tar.gz", [_file("model.onnx", bytes(range(256)) * 400)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = _tree(tmp_path)
    with pytest.raises(LoadFailed):
        extract_archive(cut, tmp_path / "dest", max_bytes=1 << 20)
    assert _tree(tmp_path) == before
