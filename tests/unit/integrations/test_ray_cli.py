"""``tenantserve ray deploy``: arguments to Settings and RayOptions, and the hint without Ray."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from tenantserve import integrations
from tenantserve.cli import app
from tenantserve.config import Settings
from tenantserve.integrations.ray_cli import parse_copies


def test_parse_copies() -> None:
    assert parse_copies(["acme/hot=2", "beta/m"]) == {"acme/hot": 2, "beta/m": 1}
    for bad in ("acme/hot=0", "=2", "acme/hot=x"):
        with pytest.raises(Exception, match="MODEL_ID=COPIES"):
            parse_copies([bad])


def _fake_ray_serve(calls: dict[str, Any]) -> ModuleType:
    fake = ModuleType("tenantserve.integrations.ray_serve")

    def deploy(settings: Settings, options: dict[str, Any]) -> str:
        calls.update(settings=settings, options=options)
        return "http://127.0.0.1:8000"

    def shutdown(options: dict[str, Any], *, keep_app: bool) -> None:
        calls["keep_app"] = keep_app

    maker: Callable[..., dict[str, Any]] = dict
    fake.RayOptions = maker  # type: ignore[attr-defined]
    fake.deploy = deploy  # type: ignore[attr-defined]
    fake.shutdown = shutdown  # type: ignore[attr-defined]
    return fake


def _install(monkeypatch: pytest.MonkeyPatch, module: ModuleType | None) -> None:
    """Make ``from tenantserve.integrations import ray_serve`` find ``module`` (None: fail)."""
    monkeypatch.delattr(integrations, "ray_serve", raising=False)
    if module is None:
        for name in ("tenantserve.integrations.ray_serve", "tenantserve.integrations.ray_router"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setitem(sys.modules, "ray", None)
    else:
        monkeypatch.setitem(sys.modules, "tenantserve.integrations.ray_serve", module)


def test_deploy_command_passes_settings_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, Any] = {}
    _install(monkeypatch, _fake_ray_serve(calls))
    result = CliRunner().invoke(
        app,
        ["ray", "deploy", "--store", "/models", "--address", "ray://head:10001", "--detach",
         "--replica-cpus", "1.5", "--min-copies", "acme/hot=2", "--max-replicas", "4",
         "--host", "127.0.0.2", "--haproxy"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8000" in result.output
    assert calls["options"]["haproxy"] is True
    assert calls["settings"].threads == 2  # one per reserved CPU, rounded up
    assert calls["settings"].store == "/models"
    assert (calls["options"]["http_host"], calls["options"]["http_port"]) == ("127.0.0.2", 8000)
    assert calls["options"]["min_copies"] == {"acme/hot": 2}
    assert calls["options"]["max_replicas"] == 4
    assert calls["keep_app"] is True


def test_deploy_command_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, _fake_ray_serve({}))
    result = CliRunner().invoke(app, ["ray", "deploy", "--memory-budget", "lots"])
    assert result.exit_code == 2
    assert "error: --memory-budget (TENANTSERVE_MEMORY_BUDGET): 'lots'" in result.output


def test_deploy_command_without_ray_prints_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _install(monkeypatch, None)
    result = CliRunner().invoke(app, ["ray", "deploy"])
    assert result.exit_code == 1
    assert "pip install 'tenantserve[ray]'" in result.output
