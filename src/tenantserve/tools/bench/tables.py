"""Records that read in any terminal: a table when it fits the width, else one block each.

Cells are never cut: a model id or a figure is printed whole, and a table too wide for the
terminal becomes blocks of ``label  value`` lines. Notes (the why of a record) wrap at spaces.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text


def show_records(
    console: Console,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    notes: Sequence[str] = (),
) -> None:
    """Print ``rows`` (cells as text, the first naming the record) under ``title``.

    ``notes`` has one entry per row ("" for none): under the table, each after its record's
    first cell; in blocks, under the block.
    """
    table = Table()
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    all_notes = list(notes) or [""] * len(rows)
    say(console, title)
    if _natural_width(table) <= console.width:
        console.print(table)
        for row, note in zip(rows, all_notes, strict=True):
            if note:
                say(console, f"{row[0]}: {note}")
        return
    width = max(len(column) for column in columns[1:])
    for row, note in zip(rows, all_notes, strict=True):
        console.print()
        console.print(Text(row[0], style="bold"))
        for column, cell in zip(columns[1:], row[1:], strict=True):
            console.print(Text(f"  {column:<{width}}  {cell}"))
        if note:
            say(console, note, indent="  ")


def _natural_width(table: Table) -> int:
    """The table's width with no column squeezed (rich would cut cells to fit otherwise)."""
    probe = Console(width=100_000, file=io.StringIO(), color_system=None)
    with probe.capture() as captured:
        probe.print(table)
    return max((len(line.rstrip()) for line in captured.get().splitlines()), default=0)


def say(console: Console, text: str, indent: str = "") -> None:
    """Wrapped at spaces to the width; a word longer than a line (a long model id) is kept
    whole rather than cut."""
    lines = textwrap.wrap(text, width=console.width, initial_indent=indent,
                          subsequent_indent=indent, break_long_words=False,
                          break_on_hyphens=False)  # fmt: skip
    for line in lines:
        console.print(Text(line), soft_wrap=True)
