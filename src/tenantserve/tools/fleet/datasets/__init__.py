"""The vendored Banking77 and CLINC150 files, and where a fleet build reads its data from.

The data ships inside the package (gzip-compressed, licences beside it; README.md in this folder
has the attribution), so a clone or an installed wheel builds fleets with nothing else around.
``--datasets DIR`` or ``TENANTSERVE_DATASETS`` point elsewhere, at compressed or plain copies.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

__all__ = [
    "DATASETS_ENV",
    "bundled_datasets",
    "data_file_exists",
    "read_data_text",
    "resolve_datasets",
]

DATASETS_ENV = "TENANTSERVE_DATASETS"


def bundled_datasets() -> Path:
    """The folder holding ``banking77/`` and ``clinc150/`` inside the installed package."""
    # A plain folder beside this module: setuptools installs package data unzipped.
    return Path(__file__).resolve().parent


def resolve_datasets(explicit: Path | None = None) -> Path:
    """``explicit``, else ``$TENANTSERVE_DATASETS``, else the bundled copy."""
    if explicit is not None:
        return explicit
    configured = os.environ.get(DATASETS_ENV)
    return Path(configured) if configured else bundled_datasets()


def data_file_exists(path: Path) -> bool:
    """Whether ``path`` or its gzip-compressed ``path.gz`` is a file."""
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def read_data_text(path: Path) -> str:
    """The text of ``path``, or of ``path.gz`` decompressed when only that exists.

    Raises:
        FileNotFoundError: neither exists.
    """
    if path.is_file():
        return path.read_text("utf-8")
    compressed = path.with_name(path.name + ".gz")
    if compressed.is_file():
        return gzip.decompress(compressed.read_bytes()).decode("utf-8")
    raise FileNotFoundError(f"no {path.name} (or {compressed.name}) in {path.parent}")
