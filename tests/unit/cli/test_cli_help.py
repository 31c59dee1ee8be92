"""Every command's help reads in an 80-column terminal: no line past 80, every flag and every
variable name whole, and ``-h`` as well as ``--help``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tenantserve.cli import app
from tenantserve.config import Settings, env_name

WIDTH = 80


def _commands() -> Iterator[tuple[list[str], Any]]:
    def walk(path: list[str], command: Any) -> Iterator[tuple[list[str], Any]]:
        yield path, command
        # Typer's groups and options are its own classes, not click's: read them by shape.
        children: dict[str, Any] = getattr(command, "commands", {})
        if children:
            for name, child in sorted(children.items()):
                yield from walk([*path, name], child)

    yield from walk([], typer.main.get_command(app))


COMMANDS = list(_commands())


def _help(path: list[str], flag: str = "--help") -> str:
    result = CliRunner().invoke(app, [*path, flag], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(p) or "root" for p, _ in COMMANDS]
)
def test_help_fits_80_columns_with_every_flag_whole(path: list[str], command: Any) -> None:
    text = _help(path)
    assert [line for line in text.splitlines() if len(line) > WIDTH] == []
    words = set(re.findall(r"--?[A-Za-z0-9][\w-]*", text))
    for param in command.params:
        if param.param_type_name == "option" and not getattr(param, "hidden", False):
            for name in [*param.opts, *param.secondary_opts]:
                assert name in words, f"{' '.join(path)}: {name} is not whole in its help"
    assert _help(path, "-h") == text


@pytest.mark.parametrize("path", [["serve"], ["ray", "deploy"]])
def test_server_help_names_every_settings_variable_whole(path: list[str]) -> None:
    words = set(re.findall(r"TENANTSERVE_[A-Z0-9_]+", _help(path)))
    secret_only = {"api_keys_json"}  # no flag: its variable is named in --api-keys' help
    for name in Settings.model_fields:
        if name not in secret_only:
            assert env_name(name) in words, f"{' '.join(path)}: {env_name(name)} not whole"
