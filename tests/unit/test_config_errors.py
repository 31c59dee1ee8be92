"""Settings that cannot start a server: each problem one line naming the flag and the variable,
and an unknown ``TENANTSERVE_*`` variable refused with the nearest valid name."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.entry_points import invoke, lines
from tenantserve.config import (
    ENV_PREFIX,
    PROJECT_VARIABLES,
    Settings,
    SettingsError,
    env_name,
    flag,
    unknown_variables,
)

REPO = Path(__file__).resolve().parents[2]
# Built, not written: the repository scan below must not find this unknown name.
STALE = f"{ENV_PREFIX}MEMORY_BUDGET_BYTES"


@pytest.mark.usefixtures("no_tenantserve_env")
def test_secrets_are_variables_only() -> None:
    assert flag("api_keys_json") is None
    result = invoke("serve", "--api-keys-json", "{}")
    assert result.exit_code == 2
    assert "No such option" in result.output


@pytest.mark.usefixtures("served", "deployed")
@pytest.mark.parametrize("command", [("serve",), ("ray", "deploy")])
def test_an_unknown_variable_stops_start_up_naming_the_nearest(command: tuple[str, ...]) -> None:
    result = invoke(*command, env={STALE: "1GiB"})
    assert result.exit_code == 2
    assert lines(result) == [
        f"error: unknown variable {STALE}; did you mean TENANTSERVE_MEMORY_BUDGET? "
        "(see tenantserve serve --help)"
    ]


@pytest.mark.usefixtures("no_tenantserve_env")
def test_the_ray_config_builder_refuses_an_unknown_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray_serve = pytest.importorskip("tenantserve.integrations.ray_serve")
    monkeypatch.setenv(f"{ENV_PREFIX}TENANT_CONCURENCY", "4")
    with pytest.raises(SettingsError, match="did you mean TENANTSERVE_TENANT_MAX_CONCURRENT"):
        ray_serve.app_builder({})


def test_the_project_variables_are_not_unknown(served: list[Settings]) -> None:
    env = dict.fromkeys(PROJECT_VARIABLES, "x")
    assert unknown_variables(env) == []
    assert invoke("serve", env=env).exit_code == 0


def _sources() -> Iterator[Path]:
    """The repository's text files (not benchmark outputs, caches or virtualenvs)."""
    yield from (REPO / name for name in ("README.md", "Makefile", "pyproject.toml"))
    for folder in ("src", "tests", "docs", "deploy", "examples", "benchmarks"):
        for path in (REPO / folder).rglob("*"):
            skipped = any(part == "out" or part.startswith(".") for part in path.parts)
            if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".json"} and not skipped:
                yield path


def test_every_tenantserve_name_in_the_repository_is_known() -> None:
    """Docs, deploy files, tests and code name only settings and the project's own variables."""
    valid = {env_name(name) for name in Settings.model_fields} | set(PROJECT_VARIABLES)
    unknown = {
        name: str(path.relative_to(REPO))
        for path in _sources()
        for name in re.findall(r"\bTENANTSERVE_[A-Z0-9_]*[A-Z0-9]", path.read_text())
        if name not in valid
    }
    assert unknown == {}


@pytest.mark.usefixtures("served")
@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--memory-budget", "4 gigs"], {}, "error: --memory-budget (TENANTSERVE_MEMORY_BUDGET): "
         "'4 gigs' is not a size; write e.g. 4GiB, 512MiB, 500MB or 1048576"),
        ([], {"TENANTSERVE_PORT": "http"}, "error: --port (TENANTSERVE_PORT): 'http': input "
         "should be a valid integer, unable to parse string as an integer"),
        (["--eviction", "fifo"], {}, "error: --eviction (TENANTSERVE_EVICTION): 'fifo': input "
         "should be 'lru', 'cost', 'decayed-cost', 'adaptive-cost', 's3fifo', 'sieve' or "
         "'wtinylfu'"),
        (["--shutdown-drain-s", "40"], {}, "error: --shutdown-drain-s "
         "(TENANTSERVE_SHUTDOWN_DRAIN_S) (40) must be shorter than --shutdown-grace-s "
         "(TENANTSERVE_SHUTDOWN_GRACE_S) (30): the drain is part of the grace period"),
    ],
)  # fmt: skip
def test_an_error_names_the_flag_and_the_variable(
    args: list[str], env: dict[str, str], line: str
) -> None:
    result = invoke("serve", *args, env=env)
    assert result.exit_code == 2
    assert lines(result) == [line]


def test_each_bad_value_gets_its_own_line(served: list[Settings]) -> None:
    result = invoke("serve", "--port", "-1", env={"TENANTSERVE_MAX_BODY": "big", STALE: "1"})
    assert result.exit_code == 2
    first, second, third = lines(result)
    assert first.startswith(f"error: unknown variable {STALE};")
    assert second.startswith("error: --port (TENANTSERVE_PORT): '-1': input should be ")
    assert third.startswith("error: --max-body (TENANTSERVE_MAX_BODY): 'big' is not a size")
