"""``--help`` of the fleet and remote commands shows every word of its help, ``<tenant>`` too.

Help rendered as Markdown (the root app's old mode) took a bare ``<tenant>`` for an HTML tag and
dropped it ("Each tenant's model is /macros."); plain help must keep every such word.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from tenantserve.cli import app

# The command groups this package owns: fleet (src/tenantserve/tools/fleet), status and models
# (src/tenantserve/tools/remote).
_OWNED = ("fleet", "status", "models")
# A word holding an <angle-bracketed> part, with what is glued to it: <tenant>/macros/.
_BRACKETED = re.compile(r"[\w./:-]*<[\w.-]+>[\w./<>-]*")


# Typer vendors its own click, so commands are walked by shape, not by class.
def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


def _owned_commands() -> list[tuple[tuple[str, ...], Any]]:
    root: Any = typer.main.get_command(app)
    return [found for name in _OWNED for found in _walk(root.commands[name], (name,))]


def _bracketed_words(command: Any) -> set[str]:
    texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
    return {word.rstrip(".") for text in texts for word in _BRACKETED.findall(text)}


def _rendered_help(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("fleet", "build"), ["<tenant>/macros/", "is <tenant>/macros."]),
        (("fleet", "synth"), ["Model i is tenant-<i>/model-<i> (input"]),
        (("status",), ["Authorization: Bearer <key>"]),
        (("models", "list"), ["Authorization: Bearer <key>"]),
    ],
)
def test_help_keeps_the_words_in_angle_brackets(path: tuple[str, ...], expected: list[str]) -> None:
    shown = _rendered_help(path)

    for phrase in expected:
        assert phrase in shown, shown


def test_every_owned_command_shows_each_bracketed_word_of_its_help() -> None:
    checked = 0
    for path, command in _owned_commands():
        shown = _rendered_help(path)
        for word in _bracketed_words(command):
            assert word in shown, f"{' '.join(path)} --help lost {word!r}: {shown}"
            checked += 1
    assert checked >= 4  # the walk reached the help strings above
