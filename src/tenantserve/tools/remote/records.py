"""Records: rows that print as a table where they fit the terminal, else as stacked blocks.

An id cut to "acme/mac…" or folded over three lines is worse than no table: when the widest
row does not fit, each row becomes its id on a line of its own, then its other fields as
"name value" pairs that wrap like prose. Decided at each render, so a live view follows the
terminal's width, and a log (80 columns) gets the stacked form of a wide table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

Cell = str | Text


@dataclass(frozen=True)
class Column:
    name: str
    justify: str = "left"  # "left" | "right" | "center"


@dataclass
class Records:
    """A titled list of rows; the first column is the record's id and is never cut."""

    title: str
    columns: Sequence[Column]
    rows: list[Sequence[Cell]] = field(default_factory=list)
    empty: str = "none"

    def add(self, *cells: Cell) -> None:
        self.rows.append(cells)

    def table(self) -> Table:
        table = Table(title=self.title, title_justify="left", title_style="bold")
        for index, column in enumerate(self.columns):
            table.add_column(column.name, justify=column.justify, no_wrap=index == 0)  # type: ignore[arg-type]
        for row in self.rows:
            table.add_row(*row)
        if not self.rows:
            table.add_row(Text(self.empty, style="dim"), *[""] * (len(self.columns) - 1))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table()
        if Measurement.get(console, options, table).maximum <= options.max_width:
            yield table
            return
        yield Text(self.title, style="bold")
        if not self.rows:
            yield Text(f"  {self.empty}", style="dim")
        yield from self._stacked()

    def _stacked(self) -> Iterator[Text]:
        for row in self.rows:
            yield Text.assemble("  ", _text(row[0], "bold"))
            line = Text("    ")
            pairs = [(c.name, _text(v)) for c, v in zip(self.columns[1:], row[1:], strict=True)]
            shown = [(name, value) for name, value in pairs if value.plain]
            for i, (name, value) in enumerate(shown):
                line.append(f"{' · ' if i else ''}{name} ", style="dim")
                line.append_text(value)
            if shown:
                yield line


def _text(cell: Cell, style: str = "") -> Text:
    return cell if isinstance(cell, Text) else Text(cell, style=style)
