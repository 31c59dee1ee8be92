"""One replica's server, without Ray: the app for its name and rank, its stats and health."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fixtures.models import ModelStoreDir
from tenantserve.config import Settings
from tenantserve.integrations.ray_replica import REPLICA_HEADER, ReplicaServer


def test_replica_builds_the_app_pins_its_copies_and_reports_its_cache(
    synthetic_store: ModelStoreDir, tmp_path: Path
) -> None:
    pinned, other = synthetic_store.model_ids[:2]
    settings = Settings(
        store=synthetic_store.url, memory_budget=64 * 1024**2, threads=1, cache_dir=tmp_path
    )
    replica = ReplicaServer(settings.model_dump(), {pinned: 1, other: 0}, spread=1)
    assert replica.routing_stats() == {}
    replica.check_health()  # nothing built yet: nothing to report

    # As Serve's proxy forwards it on loopback: a Host that names this machine.
    with TestClient(replica.build("r-1", rank=0), base_url="http://127.0.0.1") as client:
        response = client.get("/v2/health/ready")
        assert response.status_code == 200
        assert response.headers[REPLICA_HEADER] == "r-1"
        stats = replica.routing_stats()
        assert stats["resident"] == [pinned]
        assert stats["model_bytes"] > 0
        assert stats["free_bytes"] == 64 * 1024**2 - stats["model_bytes"]
        replica.check_health()
    with pytest.raises(RuntimeError, match="not accepting"):
        replica.check_health()
