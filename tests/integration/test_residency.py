"""Residency on the real server: fixed threads from 1 to 500 models; a Zipf stream within budget."""

from __future__ import annotations

import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from fixtures.oip import infer, scrape, write_model
from fixtures.server import ProcessServer


@pytest.mark.slow
def test_thread_count_is_flat_from_1_to_500_resident_models(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    store = tmp_path / "store"
    ids = [f"tenant{i:03d}/m" for i in range(500)]
    for i, model_id in enumerate(ids):
        write_model(store / model_id, weight_floats=64, seed=i)
    server = start_process(store, "--memory-budget", "4GiB")
    proc = psutil.Process(server.pid)
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, ids[0]).status_code == 200
        # Warm every pool the server has (predict, load, io) before the first count: pools
        # start threads as work overlaps, so give them 40 first calls from 8 clients.
        with ThreadPoolExecutor(8) as pool:
            warm = pool.map(lambda m: infer(client, m), ids[:40])
            assert all(r.status_code == 200 for r in warm)
        threads_few = proc.num_threads()
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda m: infer(client, m).status_code, ids))
        assert codes == [200] * len(ids)
        assert scrape(client)["tenantserve_loaded_models"] == 500
        threads_many = proc.num_threads()
    assert abs(threads_many - threads_few) <= 3, (threads_few, threads_many)


@pytest.mark.slow
@pytest.mark.parametrize(("loads_at_once", "clients"), [(None, 4), (4, 8)])
def test_zipf_stream_evicts_and_stays_within_budget(
    tmp_path: Path,
    start_process: Callable[..., ProcessServer],
    loads_at_once: int | None,
    clients: int,
) -> None:
    """RSS stays within baseline + budget, as served by default and with four loads side by
    side from eight clients (sizes said by the runtime, not measured: a mapped ORT-format file
    and a per-session overhead learned once)."""
    store = tmp_path / "store"
    n_models = 40
    ids = [f"tenant{i:02d}/m" for i in range(n_models)]
    for i, model_id in enumerate(ids):
        write_model(store / model_id, weight_floats=512 * 1024, seed=i)  # 2 MiB of weights
    # Budget ≈ a quarter of the fleet's resident size (a session holds about 1-2x its file).
    budget = 10 * 4 * 1024 * 1024
    at_once = () if loads_at_once is None else ("--max-concurrent-loads", str(loads_at_once))
    server = start_process(store, "--memory-budget", str(budget), *at_once)
    proc = psutil.Process(server.pid)
    rng = random.Random(7)
    weights = [1 / (rank + 1) ** 1.1 for rank in range(n_models)]
    stream = rng.choices(ids, weights=weights, k=600)
    with httpx.Client(base_url=server.url) as client:
        # Baseline: the server after it has served concurrent traffic and unloaded what it
        # loaded, so one-time runtime set-up and per-thread heaps are in the baseline and
        # only what models hold is charged to the budget.
        with ThreadPoolExecutor(clients) as pool:
            warm = [ids[-1], ids[-2]] * 20
            assert set(pool.map(lambda m: infer(client, m).status_code, warm)) == {200}
        for model_id in ids[-2:]:
            assert client.post(f"/v2/repository/models/{model_id}/unload").status_code == 200
        baseline = proc.memory_info().rss
        peak_rss = baseline
        with ThreadPoolExecutor(clients) as pool:
            for start in range(0, len(stream), 40):
                batch = stream[start : start + 40]
                codes = list(pool.map(lambda m: infer(client, m).status_code, batch))
                assert codes == [200] * len(batch)
                metrics = scrape(client)
                assert metrics["tenantserve_memory_used_bytes"] <= budget
                peak_rss = max(peak_rss, proc.memory_info().rss)
        metrics = scrape(client)
    assert metrics["tenantserve_model_evictions_total"] > 0
    assert metrics["tenantserve_model_cache_hits_total"] > 0
    assert peak_rss <= baseline + budget, (baseline, peak_rss, budget)
