"""``--eviction NAME``: every name is a setting, reaches the cache, and runs in it within budget."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, get_args

import pytest
from prometheus_client import CollectorRegistry

import tenantserve.app
from fixtures.entry_points import invoke
from tenantserve.cache import Loader, LoadQueue, MemoryBudget, ModelCache
from tenantserve.cache.eviction import EvictionPolicy
from tenantserve.cache.policies import NAMES, make_policy
from tenantserve.config import Settings
from tenantserve.metrics import Metrics
from tenantserve.tools.bench.simulated import Inline, SimRuntime, SimStore
from tenantserve.types import ModelId

MB = 1_000_000


def test_the_setting_offers_every_policy_and_defaults_to_adaptive_cost() -> None:
    field = Settings.model_fields["eviction"]
    assert get_args(field.annotation) == NAMES
    assert field.default == "adaptive-cost"


@pytest.mark.parametrize("name", NAMES)
def test_serve_takes_the_name(name: str, served: list[Settings]) -> None:
    result = invoke("serve", "--eviction", name)
    assert result.exit_code == 0, result.output
    assert served[-1].eviction == name


@pytest.mark.parametrize("name", NAMES)
def test_the_app_gives_its_cache_the_named_policy(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[EvictionPolicy[ModelId]] = []
    real = ModelCache

    def spy(**kwargs: Any) -> ModelCache:
        given.append(kwargs["policy"])
        return real(**kwargs)

    monkeypatch.setattr(tenantserve.app, "ModelCache", spy)
    settings = Settings.model_validate(
        {"store": str(tmp_path), "cache_dir": tmp_path / "cache", "eviction": name}
    )
    tenantserve.app.build_app(settings, registry=CollectorRegistry())
    assert type(given[0]) is type(make_policy(name))


async def _serve(policy: EvictionPolicy[ModelId], requests: list[str]) -> tuple[int, int, bool]:
    """Lease each request's model in a 30 MB cache; (most bytes used, evictions, hot kept)."""
    sizes = {raw: int(raw.rsplit("-", 1)[1]) * MB for raw in set(requests)}
    budget, metrics, inline = MemoryBudget(30 * MB), Metrics(), Inline()
    cache = ModelCache(
        loader=Loader(
            store=SimStore(sizes), runtimes={"onnx": SimRuntime()}, budget=budget,
            metrics=metrics, io_executor=inline, load_executor=inline, measure_memory=False,
        ),
        queue=LoadQueue(metrics=metrics, max_concurrent_loads=1, failed_load_ttl_s=0.0),
        budget=budget, metrics=metrics, policy=policy, load_wait_s=1.0,
    )  # fmt: skip
    most = 0
    for raw in requests:
        async with cache.lease(ModelId.parse(raw)):
            most = max(most, budget.used_bytes)
    evictions = int(metrics.registry.get_sample_value("tenantserve_model_evictions_total") or 0)
    kept = cache.is_resident(ModelId.parse("acme/hot-8"))
    await cache.close()
    return most, evictions, kept


@pytest.mark.parametrize("name", NAMES)
def test_each_policy_keeps_the_cache_in_budget_and_a_hot_model_resident(name: str) -> None:
    # One model in every other request; between, newcomers of 4-12 MB, each seen twice.
    others = [f"acme/m{i}-{4 + i % 3 * 4}" for i in range(12)]
    requests = [m for other in others for m in ("acme/hot-8", other, "acme/hot-8", other)]
    most, evictions, kept = asyncio.run(_serve(make_policy(name), requests))
    assert most <= 30 * MB
    assert evictions >= 8
    assert kept
