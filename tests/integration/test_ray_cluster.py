"""Two simulated Ray nodes (``ray.cluster_utils.Cluster``), one replica on each.

About a minute, part of ``make test``. One cluster serves the whole scenario, in the order a
user would meet it: a model sticks to one replica, distinct models spread, a hot model spills
to both, each replica's ledger stays within its budget, and killing the worker node moves its
models to the survivor with no failed request beyond those in flight at the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from fixtures.models import ModelStoreDir
from fixtures.server import free_port
from tenantserve.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

FEATURES = 16
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                    "data": [0.5] * FEATURES}]}  # fmt: skip
BUDGET = 64 * 1024**2
CLIENTS = 2
"""Closed-loop clients while the node dies: at most this many requests are in flight then."""
SETTLE_S = 15.0
"""How long Serve may take to notice the dead replica; requests sent later must all succeed."""


@dataclass(frozen=True)
class Call:
    model_id: str
    started: float
    status: int
    replica: str


@dataclass(frozen=True)
class TwoNodes:
    url: str
    kill_worker: threading.Event
    """Set to remove the worker node (and the replica on it) at once, ungracefully."""
    killed_at: list[float]


@pytest.fixture(scope="module")
def two_nodes(
    synthetic_store: ModelStoreDir, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodes]:
    from ray.cluster_utils import Cluster

    from tenantserve.integrations.ray_serve import RayOptions, deploy, shutdown

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=1)
    kill, killed_at = threading.Event(), []

    def killer() -> None:
        kill.wait()
        killed_at.append(time.perf_counter())
        cluster.remove_node(worker, allow_graceful=False)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    settings = Settings(
        store=synthetic_store.url,
        memory_budget=BUDGET,
        threads=1,
        cache_dir=tmp_path_factory.mktemp("ray-nodes-cache"),
        log_level="warning",
        # Simulated nodes of this machine: nothing beyond loopback reaches the proxy.
        insecure_no_auth=True,
    )
    options = RayOptions(
        address=cluster.address,
        replicas=2,
        replica_cpus=1,
        max_ongoing_requests=4,  # 16 clients on one model fill its holder: the rest spill
        http_port=free_port(),
        proxy_location="HeadOnly",  # both "nodes" are this machine: one port, one proxy
        routing_stats_period_s=0.5,
    )
    with pytest.MonkeyPatch.context() as env:
        # As in the smoke test: a busy box must not make Serve skip a replica's queue probe.
        env.setenv("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "2.0")
        env.setenv("RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "5.0")
        try:
            ray.init(address=cluster.address, log_to_driver=False)
            yield TwoNodes(deploy(settings, options), kill, killed_at)
        finally:
            kill.set()  # unblocks the killer thread if a test failed before the kill
            thread.join(timeout=60)
            with contextlib.suppress(Exception):
                shutdown(RayOptions(), keep_app=False)
            cluster.shutdown()


def drive(
    url: str, trace: Sequence[str], clients: int, *, until: float = float("inf")
) -> list[Call]:
    """Replay ``trace`` over OIP with ``clients`` closed-loop clients, stopping at ``until``
    (a ``perf_counter`` time) if the trace lasts longer; every call recorded."""
    queue = list(reversed(trace))
    calls: list[Call] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < until:
            model_id = queue.pop()
            started = time.perf_counter()
            try:
                response = await client.post(f"/v2/models/{model_id}/infer", json=BODY)
                status = response.status_code
                replica = response.headers.get("x-tenantserve-replica", "-")
            except httpx.HTTPError:
                status, replica = 599, "-"
            calls.append(Call(model_id, started, status, replica))

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(clients)))

    asyncio.run(run())
    return calls


def ledgers(url: str, models: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Each replica's (bytes used, budget), read from its own ``/metrics`` until both answered.

    ``/metrics`` names no model, so Serve's least-busy pick between two idle replicas can land
    on one of them every time; naming a model in Serve's own routing header sends each
    scrape to a holder of that model instead, and the models sit on both replicas.
    """
    seen: dict[str, tuple[float, float]] = {}
    for attempt in range(60):
        routed = {"serve_multiplexed_model_id": models[attempt % len(models)]}
        response = httpx.get(f"{url}/metrics", headers=routed, timeout=30)
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if not sample.labels
        }
        seen[response.headers["x-tenantserve-replica"]] = (
            values["tenantserve_memory_used_bytes"],
            values["tenantserve_memory_budget_bytes"],
        )
        if len(seen) == 2:
            break
    return seen


def test_two_nodes_route_by_model_spill_hold_budgets_and_survive_a_node_kill(
    two_nodes: TwoNodes, synthetic_store: ModelStoreDir
) -> None:
    models = list(synthetic_store.model_ids)
    url = two_nodes.url

    # A model sticks to one replica; distinct models spread over both.
    placed: dict[str, str] = {}
    for model_id in models:
        served = {c.replica for c in drive(url, [model_id] * 4, 1) if c.status == 200}
        assert len(served) == 1, f"{model_id} was served by {served}"
        placed[model_id] = served.pop()
    assert len(set(placed.values())) == 2, f"distinct models did not spread: {placed}"

    # A hot model under load spills: 16 clients on one model are answered by both replicas.
    hot = drive(url, [models[0]] * 400, 16)
    assert all(c.status == 200 for c in hot), Counter(c.status for c in hot)
    assert len({c.replica for c in hot}) == 2, Counter(c.replica for c in hot)

    # Each replica's ledger stays within its own budget.
    seen = ledgers(url, models)
    assert len(seen) == 2, seen
    for replica, (used, budget) in seen.items():
        assert budget == BUDGET, replica
        assert 0 < used <= budget, (replica, used, budget)

    # The worker node dies under load: only requests in flight at that moment may fail.
    kill_after_s = 3.0
    trace = [models[i % len(models)] for i in range(200_000)]
    timer = threading.Timer(kill_after_s, two_nodes.kill_worker.set)
    timer.start()
    calls = drive(url, trace, CLIENTS, until=time.perf_counter() + kill_after_s + SETTLE_S + 10)
    timer.cancel()
    assert two_nodes.killed_at, "the worker node was never killed: the trace ended first"
    killed = two_nodes.killed_at[0]
    failed = [c for c in calls if c.status != 200]
    assert len(failed) <= CLIENTS, Counter(c.status for c in failed)
    assert all(c.started < killed + SETTLE_S for c in failed), failed
    late = [c for c in calls if c.started > killed + SETTLE_S]
    assert late, "no request was sent after Serve had time to notice the dead replica"
    survivors = {c.replica for c in late}
    assert len(survivors) == 1, survivors
    # Every model, those of the dead replica included, is now served by the survivor.
    assert {c.model_id for c in late} == set(models)
