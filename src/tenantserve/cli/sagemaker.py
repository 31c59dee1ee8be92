"""``tenantserve sagemaker serve``: the container image's entry point, SageMaker's contract.

SageMaker starts a bring-your-own container as ``docker run IMAGE serve`` and expects an HTTP
server on port 8080 (``SAGEMAKER_BIND_TO_PORT`` in an inference pipeline) answering ``/ping``
and ``/invocations`` and, on a multi-model endpoint, the container API (``POST /models`` with
the folder it unpacked the model into, ``/models/{name}/invoke``, list, unload). This maps
that contract, and the ``SAGEMAKER_*`` variables it reads, onto the server's Settings:

- a multi-model endpoint serves ``/opt/ml/models``: SageMaker names each model, unpacks it
  into ``/opt/ml/models/<name>/model`` and loads it by that name;
- a single-model endpoint serves the model unpacked into ``/opt/ml/model``, pinned, and
  ``/invocations`` without a target header goes to it.

The server binds 0.0.0.0 without API keys unless keys are given: SageMaker fronts the
container and only its own agent reaches the port. Any other ``SAGEMAKER_*`` variable is
refused, as unknown ``TENANTSERVE_*`` ones are (docs/deploy.md lists both).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import typer

from tenantserve.config import SettingsError, env_name, load_settings, unknown_variables
from tenantserve.store.manifest import DEFAULT_MODEL_FILE, MANIFEST_NAME

ROOT_VARIABLE = "TENANTSERVE_SAGEMAKER_ROOT"  # in PROJECT_VARIABLES: load_settings allows it
DEFAULT_ROOT = Path("/opt/ml")
DEFAULT_PORT = 8080
# Of the memory the container sees, the share resident models may hold unless told: the rest
# is the process itself (Python, the runtime, requests in flight).
MEMORY_SHARE = 0.75

SAGEMAKER_VARIABLES: Mapping[str, str] = {
    "SAGEMAKER_BIND_TO_PORT": "the port to serve on (an inference pipeline sets it; else 8080)",
    "SAGEMAKER_MULTI_MODEL": "true: a multi-model endpoint (/opt/ml/models); false: one model "
    "(/opt/ml/model); unset: one model if /opt/ml/model holds anything",
    "SAGEMAKER_SAFE_PORT_RANGE": "ports the container may listen on besides (lo-hi): "
    "TENANTSERVE_GRPC_PORT, if given, must be one of them",
    "SAGEMAKER_CONTAINER_LOG_LEVEL": "a Python logging level (10, 20, 30, 40), as the SageMaker "
    "SDK sets it: --log-level, unless TENANTSERVE_LOG_LEVEL is given",
    "SAGEMAKER_REGION": "set by the SageMaker SDK; not needed (S3 reads take AWS_REGION)",
}
"""Every ``SAGEMAKER_*`` variable the entry point accepts, and what it does with it."""

_INSTEAD: Mapping[str, str] = {
    "SAGEMAKER_PROGRAM": "this image runs no inference script: deploy it with "
    "sagemaker.Model(image_uri=...), without entry_point or source_dir",
    "SAGEMAKER_SUBMIT_DIRECTORY": "this image runs no inference script: deploy it with "
    "sagemaker.Model(image_uri=...), without entry_point or source_dir",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "set TENANTSERVE_THREADS (prediction threads) instead",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "set TENANTSERVE_PREDICT_TIMEOUT_S instead",
}
_LOG_LEVELS = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "error"}
# Set by the contract: a variable of these would be overridden, so it is refused instead.
_CONTRACT_SETTINGS = ("host", "port", "store", "default_model")
_KEY_SETTINGS = ("api_keys", "api_keys_json")


class ContainerError(ValueError):
    """An environment the container cannot serve under; ``problems`` has one line for each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ContainerPlan:
    """What the container serves: ``given`` settings the contract fixes (over the variables),
    ``defaults`` the container's own (under them), and a line for the log."""

    multi_model: bool
    given: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def container_plan(environ: Mapping[str, str]) -> ContainerPlan:
    """The settings SageMaker's contract asks for, read from ``environ``.

    Raises:
        ContainerError: unknown ``SAGEMAKER_*`` or ``TENANTSERVE_*`` variables, values that
            cannot be used,
            ``TENANTSERVE_*`` variables the contract sets, or a model folder with no model.
    """
    problems = _unknown_sagemaker_variables(environ) + unknown_variables(environ)
    problems += [
        f"{env_name(name)} is set by SageMaker's contract in this container; remove it"
        for name in _CONTRACT_SETTINGS
        if env_name(name) in environ
    ]
    root = Path(environ.get(ROOT_VARIABLE) or DEFAULT_ROOT)
    port = _port(environ, problems)
    multi = _multi_model(environ, root, problems)
    _check_safe_ports(environ, problems)
    given: dict[str, Any] = {"port": port}
    # The host among the defaults, with the keys' waiver: load_settings checks the given alone
    # first, and 0.0.0.0 without keys or the waiver does not validate. Its variable is refused.
    defaults: dict[str, Any] = {"host": "0.0.0.0", "memory_budget": _memory_budget()}
    level = _log_level(environ, problems)
    if level is not None:
        defaults["log_level"] = level
    keyed = any(env_name(name) in environ for name in _KEY_SETTINGS)
    if not keyed:  # SageMaker fronts the endpoint: only its agent reaches the port
        defaults["insecure_no_auth"] = True
    if multi:
        store = root / "models"
        given["store"] = str(store)
        what = f"multi-model endpoint: the models SageMaker loads under {store}"
    else:
        store, model_id = _single_model(root / "model", problems)
        given |= {"store": str(store), "default_model": model_id}
        defaults["pin"] = (model_id,)
        what = f"single-model endpoint: model {model_id!r} in {store}"
    if problems:
        raise ContainerError(problems)
    auth = "with API keys" if keyed else "without API keys (SageMaker fronts the endpoint)"
    return ContainerPlan(multi, given, defaults, f"sagemaker: {what}, on 0.0.0.0:{port}, {auth}")


def _unknown_sagemaker_variables(environ: Mapping[str, str]) -> list[str]:
    problems = []
    for name in sorted(environ):
        if not name.startswith("SAGEMAKER_") or name in SAGEMAKER_VARIABLES:
            continue
        hint = _INSTEAD.get(name) or (
            f"this image reads {', '.join(SAGEMAKER_VARIABLES)} (docs/deploy.md); remove it "
            "from the model's Environment"
        )
        problems.append(f"unknown variable {name}: {hint}")
    return problems


def _port(environ: Mapping[str, str], problems: list[str]) -> int:
    raw = environ.get("SAGEMAKER_BIND_TO_PORT")
    if raw is None:
        return DEFAULT_PORT
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= 65535:
        return int(raw)
    problems.append(f"SAGEMAKER_BIND_TO_PORT={raw!r} is not a TCP port (1-65535)")
    return DEFAULT_PORT


def _multi_model(environ: Mapping[str, str], root: Path, problems: list[str]) -> bool:
    raw = environ.get("SAGEMAKER_MULTI_MODEL")
    if raw is None:  # whichever SageMaker laid out: a single model is unpacked before start
        try:
            return not any((root / "model").iterdir())
        except OSError:  # no such folder (or none this user may read: the error says so later)
            return True
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    problems.append(f"SAGEMAKER_MULTI_MODEL={raw!r}: write true or false")
    return True


def _check_safe_ports(environ: Mapping[str, str], problems: list[str]) -> None:
    raw = environ.get("SAGEMAKER_SAFE_PORT_RANGE")
    if raw is None:
        return
    low, _, high = raw.partition("-")
    if not (low.isdigit() and high.isdigit() and int(low) <= int(high)):
        problems.append(f"SAGEMAKER_SAFE_PORT_RANGE={raw!r} is not a range such as 9000-9999")
        return
    grpc = environ.get(env_name("grpc_port"))
    if grpc is not None and grpc.isdigit() and not int(low) <= int(grpc) <= int(high):
        problems.append(
            f"{env_name('grpc_port')}={grpc} is outside SAGEMAKER_SAFE_PORT_RANGE ({raw}), the "
            "ports SageMaker leaves to the container: pick one inside it"
        )


def _log_level(environ: Mapping[str, str], problems: list[str]) -> str | None:
    raw = environ.get("SAGEMAKER_CONTAINER_LOG_LEVEL")
    if raw is None:
        return None
    level = _LOG_LEVELS.get(int(raw)) if raw.isdigit() else raw.lower()
    if level not in _LOG_LEVELS.values():
        problems.append(
            f"SAGEMAKER_CONTAINER_LOG_LEVEL={raw!r} is not a logging level (10, 20, 30, 40)"
        )
        return None
    return level


def _memory_budget() -> int:
    """A share of the memory the container may use: its cgroup's limit, else the machine's."""
    total = int(psutil.virtual_memory().total)
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        limit = "max"
    if limit.isdigit():
        total = min(total, int(limit))
    return int(total * MEMORY_SHARE)


def _single_model(folder: Path, problems: list[str]) -> tuple[Path, str]:
    """(store, model id) for the model SageMaker unpacked into ``folder``: the folder itself
    when the archive held the model's files, or its one entry (a folder, archive or ``.onnx``)."""
    if any((folder / marker).is_file() for marker in (MANIFEST_NAME, DEFAULT_MODEL_FILE)):
        return folder.parent, folder.name
    try:
        entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        problems.append(f"cannot read {folder}, SageMaker's model folder: {exc.strerror}")
        return folder, folder.name
    if len(entries) == 1:
        return folder, entries[0]
    held = ", ".join(entries[:5]) + (" …" if len(entries) > 5 else "") if entries else "nothing"
    problems.append(
        f"{folder} holds {held}: a single-model endpoint needs {DEFAULT_MODEL_FILE} or "
        f"{MANIFEST_NAME} at the top of model.tar.gz, or one model folder or archive in it "
        "(for many models, a multi-model endpoint: SAGEMAKER_MULTI_MODEL=true)"
    )
    return folder, folder.name


sagemaker_app = typer.Typer(
    help="Run as a SageMaker container (the image's entry point).", no_args_is_help=True
)


@sagemaker_app.command("serve")
def serve() -> None:
    """Serve under SageMaker's container contract: docker run IMAGE serve.

    A multi-model endpoint (SAGEMAKER_MULTI_MODEL=true) serves the models SageMaker unpacks
    under /opt/ml/models; a single-model one serves /opt/ml/model. Listens on 0.0.0.0:8080
    (SAGEMAKER_BIND_TO_PORT), without API keys unless TENANTSERVE_API_KEYS(_JSON) gives them.
    Every other setting is its TENANTSERVE_* variable; TENANTSERVE_SAGEMAKER_ROOT stands for
    /opt/ml (docs/deploy.md).
    """
    from tenantserve.cli.serve import serve_command

    try:
        plan = container_plan(os.environ)
        settings = load_settings(plan.given, defaults=plan.defaults)
    except (ContainerError, SettingsError) as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None
    if plan.multi_model:
        # SageMaker may create /opt/ml/models with its first load; the store must exist at
        # start, or the server refuses to.
        try:
            Path(settings.store).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            typer.echo(f"error: cannot create {settings.store}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
    typer.echo(plan.summary, err=True)
    if not plan.defaults.get("insecure_no_auth"):
        typer.echo(
            "warning: API keys are on, and SageMaker's own calls (load, list, invoke) carry "
            "none: on SageMaker give no keys, it authenticates the endpoint's callers itself",
            err=True,
        )
    serve_command(settings)
