"""The ``tenantserve`` command: ``serve`` (serve.py), ``sagemaker`` (the container's entry point,
sagemaker.py), ``ray``, ``fleet``, ``bench``, ``status``, ``models``, ``tenants``; the server's
options come from its Settings (settings_options.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from tenantserve import __version__
from tenantserve.cli.sagemaker import sagemaker_app
from tenantserve.cli.serve import serve_command
from tenantserve.cli.settings_options import with_settings
from tenantserve.integrations.ray_cli import build_ray_app  # imports Ray only when run
from tenantserve.tools.bench.cli import bench_app
from tenantserve.tools.bench.plan_cli import plan_command
from tenantserve.tools.bench.replay_cli import replay_command
from tenantserve.tools.fleet.cli import fleet_app
from tenantserve.tools.remote.cli import models_app, status_command, tenants_app

app = typer.Typer(
    help="tenantserve: thousands of per-tenant models behind one endpoint, loaded on first "
    "call and kept within a memory budget.",
    no_args_is_help=True,
    add_completion=False,
    # Plain click help: it wraps to the terminal and keeps every flag and variable name whole
    # at 80 columns (rich's boxed tables cut them); -h as well as --help, on every command.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("serve")(with_settings(serve_command))
app.add_typer(sagemaker_app, name="sagemaker")
app.add_typer(fleet_app, name="fleet")
app.add_typer(build_ray_app(with_settings), name="ray")
app.add_typer(bench_app, name="bench")
app.command("plan")(plan_command)
app.command("replay")(replay_command)
app.command("status")(status_command)
app.add_typer(models_app, name="models")
app.add_typer(tenants_app, name="tenants")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tenantserve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Serve per-tenant models over the KServe v2 and SageMaker APIs."""


def main() -> None:
    app()
