"""``tenantserve sagemaker serve``: SageMaker's variables and folders → the settings it serves
with. The server itself, driven as SageMaker drives it: integration/test_sagemaker_container.py."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from fixtures.entry_points import invoke, lines
from tenantserve.cli.sagemaker import (
    DEFAULT_PORT,
    ROOT_VARIABLE,
    SAGEMAKER_VARIABLES,
    ContainerError,
    container_plan,
)
from tenantserve.config import PROJECT_VARIABLES, Settings

# Built, not written: the repository's scan for unknown names (test_config_errors.py) skips it.
TYPO = "TENANTSERVE" + "_TYPO"


def _plan_problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ContainerError) as info:
        container_plan(environ)
    return info.value.problems


def _model_folder(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    return folder


def test_the_root_variable_is_one_load_settings_allows() -> None:
    assert ROOT_VARIABLE in PROJECT_VARIABLES


def test_a_multi_model_endpoint_serves_sagemakers_models_folder(tmp_path: Path) -> None:
    plan = container_plan({ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_MULTI_MODEL": "True"})
    assert plan.multi_model
    assert plan.given == {"port": DEFAULT_PORT, "store": str(tmp_path / "models")}
    assert plan.defaults["host"] == "0.0.0.0"
    assert plan.defaults["insecure_no_auth"] is True
    assert 0 < plan.defaults["memory_budget"] < psutil.virtual_memory().total
    assert "pin" not in plan.defaults
    assert "multi-model" in plan.summary
    assert "without API keys" in plan.summary


def test_the_port_is_sagemakers(tmp_path: Path) -> None:
    environ = {ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_BIND_TO_PORT": "9090"}
    assert container_plan(environ).given["port"] == 9090


@pytest.mark.parametrize("files", [("model.onnx",), ("model.json", "weights.onnx")])
def test_a_single_model_unpacked_at_the_top_is_the_model_folder(
    tmp_path: Path, files: tuple[str, ...]
) -> None:
    _model_folder(tmp_path / "model", *files)
    plan = container_plan({ROOT_VARIABLE: str(tmp_path)})  # no SAGEMAKER_MULTI_MODEL
    assert not plan.multi_model
    assert plan.given["store"] == str(tmp_path)
    assert plan.given["default_model"] == "model"
    assert plan.defaults["pin"] == ("model",)


@pytest.mark.parametrize("entry", ["macros/model.onnx", "macros.tar.gz", "macros.onnx"])
def test_a_single_model_in_one_entry_is_that_entry(tmp_path: Path, entry: str) -> None:
    _model_folder(tmp_path / "model", entry)
    plan = container_plan({ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_MULTI_MODEL": "false"})
    assert plan.given["store"] == str(tmp_path / "model")
    assert plan.given["default_model"] == entry.split("/")[0]


@pytest.mark.parametrize("entries", [(), ("a/model.onnx", "b/model.onnx")])
def test_a_single_model_folder_without_one_model_is_refused(
    tmp_path: Path, entries: tuple[str, ...]
) -> None:
    _model_folder(tmp_path / "model", *entries).mkdir(parents=True, exist_ok=True)
    (problem,) = _plan_problems({ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_MULTI_MODEL": "false"})
    assert "single-model endpoint needs model.onnx" in problem
    assert ("a, b" if entries else "holds nothing") in problem


def test_keys_given_are_kept(tmp_path: Path) -> None:
    environ = {ROOT_VARIABLE: str(tmp_path), "TENANTSERVE_API_KEYS_JSON": '{"keys": []}'}
    plan = container_plan(environ)
    assert "insecure_no_auth" not in plan.defaults
    assert "with API keys" in plan.summary


def test_unknown_and_unusable_variables_are_refused_each_with_what_to_do(tmp_path: Path) -> None:
    problems = _plan_problems(
        {
            ROOT_VARIABLE: str(tmp_path),
            "SAGEMAKER_MULTI_MODEL": "yes",
            "SAGEMAKER_BIND_TO_PORT": "80a",
            "SAGEMAKER_MULTIMODEL": "true",
            "SAGEMAKER_PROGRAM": "inference.py",
            "SAGEMAKER_MODEL_SERVER_WORKERS": "4",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "loud",
            "TENANTSERVE_STORE": "s3://bucket/models",
            "TENANTSERVE_HOST": "127.0.0.1",
        }
    )
    text = "\n".join(problems)
    assert "unknown variable SAGEMAKER_MULTIMODEL: this image reads SAGEMAKER_BIND_TO_PORT" in text
    assert "SAGEMAKER_PROGRAM: this image runs no inference script" in text
    assert "SAGEMAKER_MODEL_SERVER_WORKERS: set TENANTSERVE_THREADS" in text
    assert "SAGEMAKER_MULTI_MODEL='yes': write true or false" in text
    assert "SAGEMAKER_BIND_TO_PORT='80a' is not a TCP port" in text
    assert "SAGEMAKER_CONTAINER_LOG_LEVEL='loud' is not a logging level" in text
    assert "TENANTSERVE_STORE is set by SageMaker's contract" in text
    assert "TENANTSERVE_HOST is set by SageMaker's contract" in text
    assert len(problems) == 8


def test_a_grpc_port_must_be_one_sagemaker_leaves_free(tmp_path: Path) -> None:
    environ = {ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_SAFE_PORT_RANGE": "9000-9999"}
    assert container_plan({**environ, "TENANTSERVE_GRPC_PORT": "9001"})
    (problem,) = _plan_problems({**environ, "TENANTSERVE_GRPC_PORT": "8001"})
    assert "outside SAGEMAKER_SAFE_PORT_RANGE (9000-9999)" in problem
    (problem,) = _plan_problems({**environ, "SAGEMAKER_SAFE_PORT_RANGE": "9999-9000"})
    assert "not a range" in problem


def test_sagemakers_log_level_gives_way_to_ours(tmp_path: Path) -> None:
    environ = {ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_CONTAINER_LOG_LEVEL": "10"}
    assert container_plan(environ).defaults["log_level"] == "debug"


def test_every_variable_read_is_documented() -> None:
    deploy = (Path(__file__).resolve().parents[3] / "docs" / "deploy.md").read_text()
    for name in [*SAGEMAKER_VARIABLES, ROOT_VARIABLE]:
        assert f"`{name}`" in deploy, name


# -- the command, up to the server -------------------------------------------------------------


def test_serve_runs_the_server_on_sagemakers_terms(served: list[Settings], tmp_path: Path) -> None:
    env = {ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_MULTI_MODEL": "true"}
    result = invoke("sagemaker", "serve", env={**env, "TENANTSERVE_THREADS": "3"})
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.store == str(tmp_path / "models")
    assert (tmp_path / "models").is_dir()  # made: SageMaker may make it with its first load
    assert settings.insecure_no_auth
    assert settings.threads == 3  # every other setting is its variable
    assert settings.default_model is None


def test_serve_with_keys_serves_with_them(served: list[Settings], tmp_path: Path) -> None:
    env = {ROOT_VARIABLE: str(tmp_path), "TENANTSERVE_API_KEYS_JSON": '{"keys": []}'}
    result = invoke("sagemaker", "serve", env=env)
    assert result.exit_code == 0, result.output
    assert not served[0].insecure_no_auth
    assert "warning: API keys are on, and SageMaker's own calls" in result.output


def test_serve_says_each_problem_and_exits_2(served: list[Settings], tmp_path: Path) -> None:
    env = {ROOT_VARIABLE: str(tmp_path), "SAGEMAKER_TYPO": "1", TYPO: "1"}
    result = invoke("sagemaker", "serve", env=env)
    assert result.exit_code == 2
    assert served == []
    said = lines(result)
    assert any(line.startswith("error: unknown variable SAGEMAKER_TYPO") for line in said)
    assert any(line.startswith(f"error: unknown variable {TYPO}") for line in said)


def test_serve_refuses_an_insecure_waiver_withdrawn_without_keys(
    served: list[Settings], tmp_path: Path
) -> None:
    env = {ROOT_VARIABLE: str(tmp_path), "TENANTSERVE_INSECURE_NO_AUTH": "false"}
    result = invoke("sagemaker", "serve", env=env)
    assert result.exit_code == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.output
