"""One name per setting: ``memory_budget`` is ``--memory-budget`` and ``TENANTSERVE_MEMORY_BUDGET``
in every entry point.

Each field gets a sample value derived from its type, so a new setting is covered here
without an edit (a new kind of type fails loudly in ``_text``). Errors: test_config_errors.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import SecretStr

from fixtures.entry_points import invoke, ray_deploy
from tenantserve.config import ENV_PREFIX, SIZE, Settings, env_name, flag, load_settings

REPO = Path(__file__).resolve().parents[2]
FIELDS = sorted(Settings.model_fields)
FLAGGED = [name for name in FIELDS if flag(name) is not None]
# Samples a type-derived value cannot give: the host must stay loopback, or keys are required.
_SAMPLES = {"host": "127.0.0.2"}


def _text(name: str) -> str:
    """A value for ``name`` as a user writes it, different from the default."""
    if name in _SAMPLES:
        return _SAMPLES[name]
    field = Settings.model_fields[name]
    annotation, default = field.annotation, field.default
    kinds = {annotation, *get_args(annotation)} - {type(None)}
    if bool in kinds:
        return "false" if default else "true"
    if get_origin(annotation) is tuple:
        return "acme/a acme/b"
    if get_origin(annotation) is Literal:
        return next(str(c) for c in get_args(annotation) if c != default)
    if SIZE in field.metadata:
        return "3MiB"
    if SecretStr in kinds:
        return '{"keys": []}'
    if int in kinds:
        return str(default + 7) if isinstance(default, int) else "97"
    if float in kinds:
        # Not a default's own value: half of it plus a step no default is twice of.
        return str(default / 2 + 0.125) if isinstance(default, float) else "2.5"
    if Path in kinds:
        return "sample/path"
    if str in kinds:
        return f"sample-{name}"
    raise AssertionError(f"no sample for {name}: {annotation}; add one to _SAMPLES")


def _args(name: str) -> list[str]:
    """``name``'s sample on a command line."""
    option, text = flag(name), _text(name)
    assert option is not None
    if text in ("true", "false"):
        return [option if text == "true" else "--no-" + option.removeprefix("--")]
    if get_origin(Settings.model_fields[name].annotation) is tuple:
        return [arg for item in text.split() for arg in (option, item)]
    return [option, text]


def _value(settings: Settings, name: str) -> object:
    value = getattr(settings, name)
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _expected(name: str) -> object:
    """What the settings make of the sample: pydantic's parse, the reference here."""
    values: dict[str, Any] = {name: _text(name)}
    return _value(Settings(**values), name)


@pytest.mark.parametrize("name", FIELDS)
def test_serve_reads_each_setting_from_its_variable(name: str, served: list[Settings]) -> None:
    result = invoke("serve", env={env_name(name): _text(name)})
    assert result.exit_code == 0, result.output
    assert _value(served[0], name) == _expected(name) != _value(Settings(), name)


@pytest.mark.parametrize("name", FLAGGED)
def test_serve_takes_each_setting_as_its_flag(name: str, served: list[Settings]) -> None:
    result = invoke("serve", *_args(name))
    assert result.exit_code == 0, result.output
    assert _value(served[0], name) == _expected(name)


@pytest.mark.parametrize("name", FIELDS)
def test_ray_deploy_reads_each_setting_from_its_variable(
    name: str, deployed: list[Settings]
) -> None:
    result = ray_deploy(env={env_name(name): _text(name)})
    assert result.exit_code == 0, result.output
    assert _value(deployed[0], name) == _expected(name)


@pytest.mark.parametrize("name", FLAGGED)
def test_ray_deploy_takes_each_setting_as_its_flag(name: str, deployed: list[Settings]) -> None:
    result = ray_deploy(*_args(name))
    assert result.exit_code == 0, result.output
    assert _value(deployed[0], name) == _expected(name)


def test_ray_deploy_keeps_its_own_defaults_unless_told(deployed: list[Settings]) -> None:
    assert ray_deploy("--replica-cpus", "1.5").exit_code == 0
    assert (deployed[0].port, deployed[0].threads) == (8000, 2)  # Serve's port; CPUs rounded up
    assert ray_deploy(env={"TENANTSERVE_PORT": "9000", "TENANTSERVE_THREADS": "5"}).exit_code == 0
    assert (deployed[1].port, deployed[1].threads) == (9000, 5)


@pytest.mark.usefixtures("no_tenantserve_env")
def test_ray_config_builder_reads_every_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    ray_serve = pytest.importorskip("tenantserve.integrations.ray_serve")
    built: list[Settings] = []
    monkeypatch.setattr(ray_serve, "application", lambda settings, options: built.append(settings))
    for name in FIELDS:
        monkeypatch.setenv(env_name(name), _text(name))
    ray_serve.app_builder({"replicas": 1})
    for name in FIELDS:
        assert _value(built[0], name) == _expected(name), name


@pytest.mark.usefixtures("no_tenantserve_env")
def test_kuberay_example_names_only_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    yaml = pytest.importorskip("yaml")
    service = yaml.safe_load((REPO / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {
        item["name"]: item.get("value", _text("api_keys_json"))  # the Secret's, in the pod
        for item in head["containers"][0]["env"]
        if item["name"].startswith(ENV_PREFIX)
    }
    assert env
    assert set(env) <= {env_name(name) for name in FIELDS}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_settings().memory_budget == 6 * 1024**3


def test_an_option_given_wins_over_its_variable(served: list[Settings]) -> None:
    result = invoke("serve", "--memory-budget", "1GiB", env={"TENANTSERVE_MEMORY_BUDGET": "2GiB"})
    assert result.exit_code == 0, result.output
    assert served[0].memory_budget == 1024**3


def test_a_list_variable_takes_spaces_or_json(served: list[Settings]) -> None:
    assert invoke("serve", env={"TENANTSERVE_PIN": '["a/m", "b/m"]'}).exit_code == 0
    assert served[0].pin == ("a/m", "b/m")


@pytest.mark.usefixtures("no_tenantserve_env")
@pytest.mark.parametrize("command", [("serve",), ("ray", "deploy")])
def test_help_lists_every_flag_and_variable(command: tuple[str, ...]) -> None:
    result = invoke(*command, "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = re.sub(r"[\s│]+", " ", result.output)  # help lines unwrapped, out of their box
    for name in FLAGGED:
        assert f" {flag(name)} " in text, name
        assert f"[env var: {env_name(name)}]" in text, name
    assert "--api-keys-json" not in text


def _bool_flags() -> Iterator[str]:
    for name in FLAGGED:
        if Settings.model_fields[name].annotation is bool:
            yield name


@pytest.mark.parametrize("name", list(_bool_flags()))
def test_a_bool_setting_has_both_flags(name: str, served: list[Settings]) -> None:
    option = flag(name)
    assert option is not None
    for args, value in (([option], True), (["--no-" + option.removeprefix("--")], False)):
        assert invoke("serve", *args).exit_code == 0
        assert getattr(served[-1], name) is value
