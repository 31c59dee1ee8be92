"""Sizes as people write and read them: ``"4GiB"`` ⇄ bytes, ``1.7 KiB`` in tables."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}  # fmt: skip


def parse_size(text: str | int) -> int:
    """``"4GiB"`` → 4294967296, ``"500MB"`` → 500000000, ``1024`` → 1024."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 4GiB, 512MiB, 500MB or 1048576")
    unit = (match.group(2) or "").upper().removesuffix("B") if match.group(2) != "B" else "B"
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(size: int) -> str:
    """``4294967296`` → ``"4GiB"``: the largest binary unit that divides it, else bytes."""
    for unit in ("TI", "GI", "MI", "KI"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit.title()}B"
    return str(size)


def human_bytes(n: float | None) -> str:
    """A size to read at a glance: ``1.7 KiB``, ``10.1 MiB``, ``512 B``; ``-`` for none."""
    if n is None:
        return "-"
    value = float(n)
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
