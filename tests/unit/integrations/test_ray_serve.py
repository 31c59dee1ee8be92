"""The Ray Serve pieces in-process: the router adapter and the deployment's options."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from ray import serve
from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve.request_router import ReplicaID

from tenantserve.config import Settings, SettingsError
from tenantserve.integrations import ray_serve
from tenantserve.integrations.ray_router import ModelAffinityRouter

_DEPLOYMENT = DeploymentID(name="TenantServe", app_name="tenantserve")


def _replica(unique_id: str, stats: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        replica_id=ReplicaID(unique_id=unique_id, deployment_id=_DEPLOYMENT), routing_stats=stats
    )


def _request(model_id: str) -> SimpleNamespace:
    return SimpleNamespace(metadata=SimpleNamespace(multiplexed_model_id=model_id))


def _ids(ranks: list[list[Any]]) -> list[list[str]]:
    return [sorted(r.replica_id.unique_id for r in rank) for rank in ranks]


def test_router_ranks_holders_first_and_remembers_where_it_sent_a_model() -> None:
    router = ModelAffinityRouter(
        deployment_id=_DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN
    )
    router.initialize_state(placement_ttl_s=30.0)
    replicas = [_replica("a", {"resident": ["t/m"], "free_bytes": 10}), _replica("b", {})]

    async def scenario() -> None:
        assert _ids(await router.choose_replicas(replicas, _request("t/m"))) == [["a"], ["b"]]
        # A cold model goes to the emptiest replica, which is claimed at once.
        assert _ids(await router.choose_replicas(replicas, _request("t/new")))[0] == ["b"]
        assert _ids(await router.choose_replicas(replicas, _request("t/new")))[0] == ["b"]
        # The hot model spilled to b: both now share rank 0.
        router.on_request_routed(_request("t/m"), replicas[1].replica_id, None)
        assert _ids(await router.choose_replicas(replicas, _request("t/m"))) == [["a", "b"]]
        assert _ids(await router.choose_replicas(replicas, None)) == [["a", "b"]]

    asyncio.run(scenario())


def test_options_shape_the_deployment(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANTSERVE_INSECURE_NO_AUTH", "true")
    fixed = ray_serve.RayOptions(replicas=3)
    assert not fixed.autoscaling
    assert fixed.spread == 3
    scaled = ray_serve.RayOptions(min_replicas=2, max_replicas=5, min_copies={"acme/hot": 4})
    assert scaled.autoscaling
    assert scaled.spread == 2
    assert ray_serve.RayOptions(max_replicas=4).spread == 1  # scales down to its floor of 1
    with caplog.at_level(logging.WARNING, logger="tenantserve.ray"):
        autoscaled = _deployment(ray_serve.application(Settings(), scaled))
    assert "acme/hot" in caplog.text
    scaling = autoscaled._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (2, 5)
    assert scaling.target_ongoing_requests == 4.0
    assert autoscaled.max_ongoing_requests == 16
    assert autoscaled.init_args[1:] == ({"acme/hot": 4}, 2)  # min copies, spread
    with pytest.raises(ValueError, match="unknown args"):
        ray_serve.app_builder({"address": "ray://elsewhere:10001"})
    fixed_app = _deployment(ray_serve.app_builder({"replicas": 1, "min_copies": {"acme/hot": 1}}))
    assert fixed_app.num_replicas == 1
    assert fixed_app._deployment_config.autoscaling_config is None
    assert fixed_app.init_args[1:] == ({"acme/hot": 1}, 1)


def test_with_haproxy_the_deployment_has_no_router_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Serve's HAProxy ingress balances requests itself and refuses a custom router that it
    would bypass: asked for here, or switched on for the whole cluster, none is set."""
    monkeypatch.setenv("TENANTSERVE_INSECURE_NO_AUTH", "true")
    monkeypatch.delenv(ray_serve.HAPROXY_ENV, raising=False)

    def router(options: ray_serve.RayOptions) -> Any:
        config = _deployment(ray_serve.application(Settings(), options))._deployment_config
        return config.request_router_config.request_router_class

    assert "ModelAffinityRouter" in str(router(ray_serve.RayOptions()))
    assert "ModelAffinityRouter" not in str(router(ray_serve.RayOptions(haproxy=True)))
    monkeypatch.setenv(ray_serve.HAPROXY_ENV, "1")
    assert ray_serve.RayOptions().haproxy_ingress
    assert "ModelAffinityRouter" not in str(router(ray_serve.RayOptions()))


def _deployment(app: Any) -> Any:
    """The one deployment a Serve application binds (Serve has no public accessor)."""
    assert isinstance(app, serve.Application), type(app)
    deployment = app._bound_deployment
    assert deployment.name == ray_serve.DEPLOYMENT_NAME
    return deployment


KEYS_JSON = json.dumps(
    {"keys": [{"name": "ops", "key": "k-0123456789abcdef", "scopes": ["*"],
               "roles": ["invoke", "manage", "metrics"]}]}
)  # fmt: skip


def test_the_config_entry_point_and_a_shared_cluster_need_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TENANTSERVE_API_KEYS_JSON", "TENANTSERVE_INSECURE_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    # Serve's proxy listens where the cluster says (KubeRay: 0.0.0.0), whatever TENANTSERVE_HOST.
    with pytest.raises(SettingsError, match="through Ray Serve's proxy"):
        ray_serve.app_builder({"replicas": 1})
    # Onto a running cluster: its Serve keeps its own proxies. Refused before connecting.
    shared = ray_serve.RayOptions(address="ray://elsewhere:10001")
    with pytest.raises(SettingsError, match="on the Ray cluster at ray://elsewhere:10001"):
        ray_serve.deploy(Settings(), shared)
    public = ray_serve.RayOptions(http_host="0.0.0.0")
    with pytest.raises(SettingsError, match=r"proxy on 0\.0\.0\.0"):
        ray_serve.deploy(Settings(), public)
    monkeypatch.setenv("TENANTSERVE_API_KEYS_JSON", KEYS_JSON)
    assert ray_serve.app_builder({"replicas": 1}) is not None
    monkeypatch.delenv("TENANTSERVE_API_KEYS_JSON")
    monkeypatch.setenv("TENANTSERVE_INSECURE_NO_AUTH", "true")  # an explicit waiver
    assert ray_serve.app_builder({"replicas": 1}) is not None


def test_a_grpc_port_is_refused_before_replicas_each_try_to_bind_it() -> None:
    with pytest.raises(SettingsError, match=r"--grpc-port .* not yet on Ray Serve"):
        ray_serve.application(Settings(grpc_port=8001), ray_serve.RayOptions())


def test_kuberay_example_builds_and_names_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example reads its keys from a Secret: stand one in.
    monkeypatch.setenv("TENANTSERVE_API_KEYS_JSON", KEYS_JSON)
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from tenantserve.integrations.ray_proxy import CALLBACK, CALLBACK_ENV

    root = Path(__file__).resolve().parents[3]
    service = yaml.safe_load((root / "deploy" / "kuberay" / "rayservice.yaml").read_text())
    (serve_app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert serve_app["import_path"] == "tenantserve.integrations.ray_serve:app_builder"
    built = call_user_app_builder_with_args_if_necessary(ray_serve.app_builder, serve_app["args"])
    deployment = _deployment(built)
    args = serve_app["args"]
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (
        args["min_replicas"],
        args["max_replicas"],
    )
    assert deployment.ray_actor_options["num_cpus"] == args["replica_cpus"]
    assert deployment.init_args[1] == args["min_copies"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {item["name"]: item.get("value") for item in head["containers"][0]["env"]}
    assert env[CALLBACK_ENV] == CALLBACK
    for name in env:
        if name.startswith("TENANTSERVE_"):
            assert name.removeprefix("TENANTSERVE_").lower() in Settings.model_fields, name
