"""One command-line option per Settings field, generated: a new setting is written once.

The field ``memory_budget`` becomes ``--memory-budget``, its help the first paragraph of the
field's docstring plus its variable ``TENANTSERVE_MEMORY_BUDGET``, its default the field's.
Options arrive as the raw text typed, and pydantic alone parses them, as it parses the
variables: one parser and one error format (``error: --flag (VARIABLE): …``) for both. The
options read no variables themselves, and only those on the command line are passed on;
:func:`tenantserve.config.load_settings` reads the variables, the same way in every entry
point.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args, get_origin

import typer
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tenantserve.config import (
    SIZE,
    Settings,
    SettingsError,
    env_name,
    flag,
    load_settings,
)
from tenantserve.units import format_size

_CONTEXT = "typer_context"  # typer passes its context to the parameter typed typer.Context
_METAVARS: dict[object, str] = {int: "INTEGER", float: "FLOAT", Path: "PATH", str: "TEXT"}


def settings_parameters(
    *,
    defaults: Mapping[str, object] | None = None,
    shown: Mapping[str, str] | None = None,
    panel: str | None = None,
) -> list[inspect.Parameter]:
    """A keyword parameter per field with a flag (secrets have none), for a typer signature.

    Defaults only show in the help (a value not typed is never passed on): the field's, the
    command's own in ``defaults``, or a description in ``shown`` for one computed at start.
    """
    params = []
    for name, field in Settings.model_fields.items():
        option = flag(name)
        if option is None:
            continue
        types = {field.annotation, *get_args(field.annotation)} - {type(None)}
        # The first paragraph of the docstring, its reST literals as plain text.
        help_text = (field.description or "").split("\n\n")[0].replace("``", "")
        default = _default_text(field, (defaults or {}).get(name, field.default))
        metavar: str | None = None
        annotation: Any = str | None
        if bool in types:
            annotation, option = bool | None, f"{option}/--no-{option.removeprefix('--')}"
        elif get_origin(field.annotation) is tuple:
            annotation, metavar, help_text = list[str] | None, "TEXT", f"{help_text} Repeatable."
        elif get_origin(field.annotation) is Literal:
            metavar = "[" + "|".join(map(str, get_args(field.annotation))) + "]"
        else:
            metavar = "SIZE" if SIZE in field.metadata else _metavar(types)
        info = typer.Option(
            option,
            help=f"{help_text} [env var: {env_name(name)}]",
            metavar=metavar,
            show_default=(shown or {}).get(name, True),
            rich_help_panel=panel,
        )
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None if name in (shown or {}) else default,
                annotation=Annotated[annotation, info],
            )
        )
    return params


def _default_text(field: FieldInfo, value: object) -> str | bool | None:
    """A default as written on a command line; ``None`` when there is nothing to show (none,
    empty, or computed at start: the docstring says what it is)."""
    if value is PydanticUndefined or value is None or value == ():
        return None
    if isinstance(value, bool):
        return value
    return format_size(value) if SIZE in field.metadata and isinstance(value, int) else str(value)


def _metavar(types: set[Any]) -> str:
    return next((_METAVARS[t] for t in types if t in _METAVARS), "TEXT")


def with_settings(
    command: Callable[..., None],
    *,
    defaults: Mapping[str, object] | None = None,
    shown: Mapping[str, str] | None = None,
    panel: str | None = None,
) -> Callable[..., None]:
    """``command(settings, **own)`` as a typer command: its own options, then one per setting.

    A setting left off the command line falls to its variable, then to ``defaults`` (the
    command's own, shown as ``shown``), then to the field's default. Settings that do not
    validate, or unknown ``TENANTSERVE_*`` variables, end the command with one ``error:`` line
    each and exit code 2, before ``command`` runs.
    """
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    clash = {p.name for p in own} & set(Settings.model_fields)
    if clash:
        raise TypeError(f"{command.__name__}: options {sorted(clash)} are settings already")

    # Not __annotations__: the signature below says all typer needs, and typer resolves these
    # names in the command's module (``object`` and ``None`` resolve anywhere).
    @functools.wraps(command, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    def run(**values: object) -> None:
        context = cast(typer.Context, values.pop(_CONTEXT))  # typer's click context
        given = {}
        for name in Settings.model_fields:
            value = values.pop(name, None)
            source = context.get_parameter_source(name)  # by name: typer's click is private
            if source is not None and source.name == "COMMANDLINE":
                given[name] = value
        try:
            settings = load_settings(given, defaults=defaults)
        except SettingsError as exc:
            for problem in exc.problems:
                typer.echo(f"error: {problem}", err=True)
            raise typer.Exit(2) from None
        command(settings, **values)

    context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    parameters = [*own, context, *settings_parameters(defaults=defaults, shown=shown, panel=panel)]
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return run
