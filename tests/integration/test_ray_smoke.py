"""Ray Serve smoke test: two replicas on a local cluster, requests follow their model.

One bounded scenario, kept short for a busy 2-core CI machine: the simulated two-node cluster
with a hot model spilling and a node kill is ``test_ray_cluster.py`` ;
1 vs 2 replicas on one trace is ``benchmarks/bench_ray.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from fixtures.models import ModelStoreDir
from fixtures.server import free_port
from tenantserve.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]

FEATURES = 16
REPEATS = 4


@pytest.fixture(scope="module")
def ray_url(
    synthetic_store: ModelStoreDir, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The app on a local Ray cluster: 2 CPUs, 2 replicas of half a CPU, proxy on loopback."""
    from tenantserve.integrations.ray_serve import RayOptions, deploy, shutdown

    settings = Settings(
        store=synthetic_store.url,
        memory_budget=64 * 1024**2,
        threads=1,
        cache_dir=tmp_path_factory.mktemp("ray-cache"),
    )
    options = RayOptions(
        num_cpus=2, replicas=2, replica_cpus=0.5, http_port=free_port(), routing_stats_period_s=0.5
    )
    before = _ray_processes()
    with pytest.MonkeyPatch.context() as env:
        # Serve skips a replica that misses its 0.1 s queue-length probe; on a busy CI box
        # that would send a request past its model's holder. The local cluster's processes
        # inherit this environment.
        env.setenv("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "2.0")
        env.setenv("RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "5.0")
        try:
            yield deploy(settings, options)
        finally:
            shutdown(options)
            _wait_gone(_ray_processes() - before, timeout_s=60)


def _ray_processes() -> set[int]:
    """Our own descendants that Ray started: the cluster's daemons and workers."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _wait_gone(pids: set[int], *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if psutil.pid_exists(pid) and not _zombie(pid)}
        time.sleep(0.2)
    assert not alive, f"Ray left processes behind: {sorted(alive)}"


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _oip(client: httpx.Client, model_id: str) -> str:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, FEATURES],
                        "data": [0.5] * FEATURES}]}  # fmt: skip
    response = client.post(f"/v2/models/{model_id}/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["name"] == "output"
    return response.headers["x-tenantserve-replica"]


def _sagemaker(client: httpx.Client, model_id: str) -> str:
    response = client.post(
        "/invocations",
        json={"instances": [[0.5] * FEATURES]},
        headers={"X-Amzn-SageMaker-Target-Model": model_id},
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]) == 4
    return response.headers["x-tenantserve-replica"]


def test_requests_follow_their_model_across_two_replicas(
    ray_url: str, synthetic_store: ModelStoreDir
) -> None:
    with httpx.Client(base_url=ray_url, timeout=60) as client:
        assert client.get("/v2/health/ready").status_code == 200
        placed: dict[str, str] = {}
        for model_id in synthetic_store.model_ids:
            served = {_oip(client, model_id) for _ in range(REPEATS)}
            assert len(served) == 1, f"{model_id} was served by {served}"
            placed[model_id] = served.pop()
        assert len(set(placed.values())) == 2, f"distinct models did not spread: {placed}"
        # The SageMaker route names its model in a header; it reaches the same holder.
        for model_id in synthetic_store.model_ids[:2]:
            assert _sagemaker(client, model_id) == placed[model_id]
