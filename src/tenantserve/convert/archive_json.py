"""Zip archives whose JSON is read as data (``pytorch.pt2``, ``keras.keras``), before their
framework opens them: the archive opened, a JSON entry read under a size cap, and every
object nested in it visited."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tenantserve.errors import LoadFailed


def open_zip(path: Path, what: str) -> zipfile.ZipFile:
    """The archive at ``path``; ``LoadFailed`` saying it is not ``what`` when not a zip."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise LoadFailed(f"{path.name} is not {what} (not a zip file)") from None


def read_json(archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, limit: int) -> Any:
    """Entry ``info`` parsed, refused (named ``label``) past ``limit`` bytes or when not JSON;
    the size is the archive's own record, checked before a byte is inflated."""
    if info.file_size > limit:
        raise LoadFailed(f"{label} is over {limit >> 20} MiB")
    try:
        return json.loads(archive.read(info))
    except ValueError:
        raise LoadFailed(f"{label} is not JSON") from None


def objects(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object nested in ``value`` (itself included), depth first."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
