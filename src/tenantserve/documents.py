"""Operator files as documents: a JSON (``.json``) or TOML file read into a dict."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any


def read_document(path: Path) -> dict[str, Any]:
    """A JSON (``.json``) or TOML (anything else) file as a dict; ``ValueError`` if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a table (an object) at the top")
    return doc
