"""``/metrics`` with thousands of resident models: bounded series, quick scrapes (RELIABILITY 43).

Its own file: loading 5,000 models takes about half a minute on the 2-core box (each load
trims the heap, which grows with the models already resident).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.oip import infer, scrape, write_model
from fixtures.server import ProcessServer

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _series(client: httpx.Client) -> Series:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for sample in family.samples
    }


def _shape(series: Series) -> Counter[str]:
    """How many series each metric has, whichever label values they carry."""
    return Counter(name for name, _ in series)


@pytest.mark.slow
def test_metrics_stay_bounded_with_5000_resident_models(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    store = tmp_path / "store"
    ids = [f"tenant{i % 500:03d}/m{i:04d}" for i in range(5000)]
    for i, model_id in enumerate(ids):
        write_model(store / model_id, weight_floats=16, seed=i)
    server = start_process(store, "--memory-budget", "8GiB", "--max-concurrent-loads", "4")
    limits = httpx.Limits(max_connections=8)
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as client:
        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda m: infer(client, m).status_code, ids[:40])) == {200}
            few = _series(client)
            assert set(pool.map(lambda m: infer(client, m).status_code, ids[40:])) == {200}
        assert scrape(client)["tenantserve_loaded_models"] == 5000
        many = _series(client)
        timings = []
        for _ in range(5):
            started = time.perf_counter()
            assert client.get("/metrics").status_code == 200
            timings.append(time.perf_counter() - started)

        # Scrapes render on a worker thread: health answers while eight run at once.
        with ThreadPoolExecutor(8) as pool:
            scraping = [pool.submit(client.get, "/metrics") for _ in range(8)]
            health = [pool.submit(client.get, "/v2/health/live") for _ in range(8)]
            assert {f.result().status_code for f in health} == {200}
            assert {f.result().status_code for f in scraping} == {200}
    # Releasing 5,000 sessions one trim at a time outlasts the 30 s shutdown grace; that is
    # not what this test is about, so the server is stopped hard.
    server.proc.kill()
    server.proc.wait(timeout=30)

    # No more series with 5,000 resident models than with 40: nothing is labelled per model or
    # per tenant beyond the top K (10 each) plus "other". (Fewer is possible: when the labels
    # are re-ranked every 30 s, a newly hot model's series starts with its next request.)
    assert set(_shape(many)) == set(_shape(few))
    assert not _shape(many) - _shape(few), _shape(many) - _shape(few)
    labelled = {
        dict(labels)["model"] for name, labels in many if name == "tenantserve_model_requests_total"
    }
    assert "other" in labelled
    assert len(labelled) <= 11
    assert len(many) < 1000
    assert statistics.median(timings) < 1.0, timings
