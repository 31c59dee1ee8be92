"""Unpack a ``.tar.gz`` artifact into a staging folder, refusing anything that could escape it."""

from __future__ import annotations

import os
import secrets
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from tenantserve.convert.registry import native_file
from tenantserve.errors import LoadFailed
from tenantserve.store.manifest import DEFAULT_MODEL_FILE, MANIFEST_NAME
from tenantserve.store.tar_stream import open_tar_stream

DEFAULT_MAX_MEMBERS = 10_000
_CHUNK_BYTES = 1024 * 1024
_MAX_SHOWN_CHARS = 80
# Archive tools add these beside the real top-level folder; they never hold the model.
_IGNORED_TOP_LEVEL = ("__MACOSX",)


def extract_archive(
    archive: Path, dest: Path, *, max_bytes: int, max_members: int = DEFAULT_MAX_MEMBERS
) -> None:
    """Unpack the gzip tar ``archive`` into ``dest``, which must not exist yet.

    Only regular files and folders with relative paths are accepted; links, devices, fifos,
    sparse members, ``..`` and absolute names are refused. The bytes written are counted as
    they are written, so the cap holds whatever the headers claim; long-name and PAX headers
    and the decompressed stream are bounded too (see ``tar_stream``), so a refused archive
    costs no more memory than a good one. Everything is written to a temporary sibling that is
    renamed to ``dest`` only when the whole archive was good.

    Raises:
        LoadFailed: the archive is malformed, unsafe, or over ``max_bytes`` / ``max_members``.
    """
    staging = dest.parent / f".{dest.name}.unpack-{secrets.token_hex(6)}"
    staging.mkdir(mode=0o700)
    try:
        _extract_into(archive, staging, max_bytes=max_bytes, max_members=max_members)
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def find_artifact_dir(root: Path) -> Path:
    """The folder under an unpacked archive that holds the model: ``root`` or its one folder.

    Raises:
        LoadFailed: neither ``root`` nor a single top-level folder holds a model file.
    """
    if _holds_model(root):
        return root
    entries = [
        entry
        for entry in root.iterdir()
        if not entry.name.startswith(".") and entry.name not in _IGNORED_TOP_LEVEL
    ]
    if len(entries) == 1 and entries[0].is_dir() and _holds_model(entries[0]):
        return entries[0]
    raise LoadFailed(
        f"archive holds no {DEFAULT_MODEL_FILE} or {MANIFEST_NAME} at its top level "
        "or in one top-level folder"
    )


def _holds_model(folder: Path) -> bool:
    return (
        (folder / MANIFEST_NAME).is_file()
        or (folder / DEFAULT_MODEL_FILE).is_file()
        or native_file(folder) is not None
    )


def _extract_into(archive: Path, staging: Path, *, max_bytes: int, max_members: int) -> None:
    written = 0
    try:
        with open_tar_stream(archive, max_bytes=max_bytes, max_members=max_members) as (
            tar,
            members,
        ):
            for count, member in enumerate(members, start=1):
                if count > max_members:
                    raise LoadFailed(f"archive has more than {max_members} members")
                parts = _checked_parts(member)
                # The stdlib "data" filter is a second, independent guard over our own checks.
                try:
                    tarfile.data_filter(member, str(staging))
                except tarfile.FilterError as exc:
                    raise LoadFailed(
                        f"archive member {_shown(member.name)} is refused ({type(exc).__name__})"
                    ) from exc
                target = staging.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                # Refuse early on the declared size; the copy below counts the real bytes.
                if written + member.size > max_bytes:
                    raise _too_large(max_bytes)
                source = tar.extractfile(member)
                if source is None:
                    raise LoadFailed(f"archive member {_shown(member.name)} has no data")
                target.parent.mkdir(parents=True, exist_ok=True)
                _ensure_inside(target, staging)
                written = _copy_counted(source, target, written=written, max_bytes=max_bytes)
    except LoadFailed:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise LoadFailed(f"archive is not a valid .tar.gz ({type(exc).__name__})") from exc


def _checked_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    if "\x00" in name or "\\" in name:
        raise LoadFailed("archive member name holds a NUL or backslash")
    if name.startswith("/"):
        raise LoadFailed("archive member has an absolute path")
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if ".." in parts:
        raise LoadFailed("archive member path contains '..'")
    if member.issym() or member.islnk():
        raise LoadFailed(f"archive member {_shown(name)} is a link; links are not allowed")
    if member.issparse():
        raise LoadFailed(f"archive member {_shown(name)} is a sparse file; not allowed")
    if not (member.isreg() or member.isdir()):
        raise LoadFailed(f"archive member {_shown(name)} is a device, fifo or other special file")
    if not parts and not member.isdir():
        raise LoadFailed("archive member has an empty name")
    return parts


def _ensure_inside(target: Path, staging: Path) -> None:
    # Nothing we write is a link, so this only fails if the staging folder itself was tampered
    # with; it is cheap insurance before opening a file for writing.
    if not target.parent.resolve().is_relative_to(staging.resolve()):
        raise LoadFailed("archive member would be written outside the staging folder")


def _copy_counted(source: IO[bytes], target: Path, *, written: int, max_bytes: int) -> int:
    # O_EXCL: a second member of the same name is refused instead of overwriting the first;
    # O_NOFOLLOW: never write through a link, even one planted by something else.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError as exc:
        raise LoadFailed(f"archive holds {_shown(target.name)} twice") from exc
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK_BYTES):
            written += len(chunk)
            if written > max_bytes:
                raise _too_large(max_bytes)
            out.write(chunk)
    return written


def _too_large(max_bytes: int) -> LoadFailed:
    return LoadFailed(f"archive unpacks to more than {max_bytes} bytes")


def _shown(name: str) -> str:
    # Member names come from the archive's author: print them bounded and free of controls.
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name[:_MAX_SHOWN_CHARS])
    return repr(cleaned + ("…" if len(name) > _MAX_SHOWN_CHARS else ""))
