"""deploy/kserve/servingruntime.yaml: a multi-model KServe runtime (OIP over HTTP and gRPC) whose
container runs ``tenantserve serve`` on settings that exist, and that server driven as KServe's
model agent drives it (the TrainedModel's files put under the store, then load, infer over HTTP
and gRPC, unload). No Kubernetes here: KServe itself is not exercised (docs/deploy.md)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import yaml  # type: ignore[import-untyped]

from fixtures.models import make_model
from fixtures.server import ProcessServer, free_port
from tenantserve.config import ENV_PREFIX, Settings, env_name
from tenantserve.types import ModelId

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "kserve" / "servingruntime.yaml"
AGENT_PORT = 8080  # KServe's model agent calls localhost:8080 (pkg/agent/puller.go)
MODEL_DIR = "/mnt/models"  # where the agent downloads each TrainedModel


def _documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(EXAMPLE.read_text())}


def _container() -> dict[str, Any]:
    (container,) = _documents()["ServingRuntime"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container()["env"]}


def test_the_runtime_is_multi_model_oip_over_http_and_grpc() -> None:
    docs = _documents()
    runtime, service, trained = (
        docs["ServingRuntime"],
        docs["InferenceService"],
        docs["TrainedModel"],
    )
    spec = runtime["spec"]
    assert spec["multiModel"] is True
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    (model_format,) = spec["supportedModelFormats"]
    container = _container()
    assert container["name"] == "kserve-container"  # the name KServe gives its predictor
    assert [*container["command"], *container["args"]] == ["tenantserve", "serve"]
    env = _env()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {
        "http1": int(env["TENANTSERVE_PORT"]),
        "h2c": int(env["TENANTSERVE_GRPC_PORT"]),
    }
    assert ports["http1"] == AGENT_PORT
    assert env["TENANTSERVE_STORE"] == MODEL_DIR
    assert container["securityContext"]["runAsNonRoot"] is True

    predictor = service["spec"]["predictor"]["model"]
    assert "storageUri" not in predictor  # none: KServe makes it a multi-model predictor
    assert predictor["runtime"] == runtime["metadata"]["name"]
    assert predictor["modelFormat"]["name"] == model_format["name"]
    assert predictor["protocolVersion"] in spec["protocolVersions"]
    assert trained["spec"]["inferenceService"] == service["metadata"]["name"]
    assert trained["spec"]["model"]["framework"] == model_format["name"]
    ModelId.parse(trained["metadata"]["name"])  # the id the agent loads it as


@pytest.mark.usefixtures("no_tenantserve_env")
def test_the_runtime_names_only_settings_that_start_a_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = _env()
    assert all(name.startswith(ENV_PREFIX) for name in env)
    assert set(env) <= {env_name(field) for field in Settings.model_fields}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from tenantserve.config import load_settings

    settings = load_settings()
    assert (settings.host, settings.port, settings.grpc_port) == ("0.0.0.0", 8080, 8081)
    assert settings.memory_budget == 3 * 1024**3


@pytest.mark.slow
def test_the_runtime_serves_what_kserves_model_agent_places(
    start_process: Callable[..., ProcessServer], tmp_path: Path
) -> None:
    store = tmp_path / "mnt-models"
    store.mkdir()
    grpc_port = free_port()
    # The container's own settings; the store and ports moved off /mnt/models and 8080/8081.
    env = {**_env(), "TENANTSERVE_STORE": str(store), "TENANTSERVE_GRPC_PORT": str(grpc_port)}
    server = start_process(store, env=env)
    name = _documents()["TrainedModel"]["metadata"]["name"]
    make_model(store / name, size_bytes=50_000, seed=4)  # the agent's download of storageUri
    agent = httpx.Client(base_url=server.url, timeout=30)
    loaded = agent.post(f"/v2/repository/models/{name}/load", content=b"{}")
    assert loaded.status_code == 200, loaded.text

    row = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
    http = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    grpc = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        assert http.is_model_ready(name)
        assert grpc.is_model_ready(name)
        over_http = thttp.InferInput("input", [1, 16], "FP32")
        over_http.set_data_from_numpy(row)
        over_grpc = tgrpc.InferInput("input", [1, 16], "FP32")
        over_grpc.set_data_from_numpy(row)
        by_http = http.infer(name, [over_http]).as_numpy("output")
        by_grpc = grpc.infer(name, [over_grpc]).as_numpy("output")
        assert by_http is not None
        assert by_grpc is not None
        np.testing.assert_array_equal(by_http, by_grpc)
    finally:
        http.close()
        grpc.close()

    # The TrainedModel deleted: the agent removes its folder, then unloads it.
    shutil.rmtree(store / name)
    assert agent.post(f"/v2/repository/models/{name}/unload", content=b"{}").status_code == 200
    assert agent.get(f"/v2/models/{name}/ready").status_code != 200
    agent.close()
    assert server.stop() in (0, -signal.SIGTERM)
