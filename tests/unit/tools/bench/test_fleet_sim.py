"""The simulated instance: one event loop, its cores, its load slots (fleet_sim.CoreQueue)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantserve.tools.bench.fleet_profile import FleetProfile, ModelCost
from tenantserve.tools.bench.fleet_sim import CoreQueue, FleetShape, rate_bound, run_fleet

MS = 0.001


def test_request_handling_takes_the_loop_one_at_a_time_and_inference_the_cores() -> None:
    handled = CoreQueue(cores=2, load_slots=1)
    # Handling only: the second waits for the first on the one loop, whatever the cores.
    assert [handled.run(0.0, 1 * MS, 0.0, False) for _ in range(2)] == pytest.approx(
        [1 * MS, 2 * MS]
    )
    inferred = CoreQueue(cores=2, load_slots=1)
    # Inference only: two cores run two at once; the third waits for one.
    assert [inferred.run(0.0, 0.0, 1 * MS, False) for _ in range(3)] == pytest.approx(
        [1 * MS, 1 * MS, 2 * MS]
    )


def test_a_first_call_queues_after_its_load_behind_what_came_meanwhile() -> None:
    queue = CoreQueue(cores=1, load_slots=1, load_hold=10.0)
    ready, cold = queue.admit(0.0, "a", 1 * MS, hit=False)
    assert ready == pytest.approx(10 * MS)  # its slot held 10x its own time
    assert cold
    assert queue.ongoing(0.0) == 1  # waiting for its load counts as ongoing
    # A request for the same model meanwhile waits for that load (single flight) ...
    same, cold = queue.admit(5 * MS, "a", 1 * MS, hit=True)
    assert same == pytest.approx(10 * MS)
    assert cold
    # ... and a warm one that came meanwhile runs first.
    warm, cold = queue.admit(5 * MS, "b", 1 * MS, hit=True)
    assert (warm, cold) == (5 * MS, False)
    # The load took the loop for its own time (0-1 ms): the warm request's handling is free.
    assert queue.run(warm, 1 * MS, 2 * MS, False) == pytest.approx(8 * MS)
    assert queue.run(ready, 1 * MS, 2 * MS, True) == pytest.approx(13 * MS)
    assert queue.ongoing(13 * MS) == 1  # the other request for "a" is still admitted


def test_loads_wait_for_a_slot() -> None:
    queue = CoreQueue(cores=4, load_slots=1, load_hold=3.0)
    first, _ = queue.admit(0.0, "a", 1 * MS, hit=False)
    second, _ = queue.admit(0.0, "b", 1 * MS, hit=False)
    assert [first, second] == pytest.approx([3 * MS, 6 * MS])


def test_an_instance_serves_at_most_what_its_loop_or_its_cores_allow() -> None:
    assert rate_bound(4, 1 * MS, 1 * MS) == pytest.approx(1000)  # the loop bounds it
    assert rate_bound(2, 1 * MS, 4 * MS) == pytest.approx(400)  # the cores do
    assert rate_bound(1, 1 * MS, 1 * MS) == pytest.approx(500)  # one core: both parts on it


def test_a_profile_measured_under_traffic_makes_first_calls_slower() -> None:
    # 40 models, a budget of 10: every request a miss or a hit, the same cache either way.
    models = {f"t{i:02d}/m": ModelCost(1_000_000, 1 * MS, 1 * MS) for i in range(40)}
    trace = [(i * 2 * MS, f"t{(i * 7) % 40:02d}/m") for i in range(2000)]
    shape = FleetShape(1, 2, 10_000_000, 16, load_slots=2, request_cpu_s=0.5 * MS)
    alone = run_fleet(trace, FleetProfile(models, 1), shape, clients=8)
    busy = run_fleet(trace, FleetProfile(models, 1, load_hold=10.0), shape, clients=8)
    assert (alone.hits, alone.loads) == (busy.hits, busy.loads)
    assert len(busy.latencies) == len(trace)

    def p50(latencies: list[float], cold: list[bool]) -> float:
        chosen = sorted(x for x, c in zip(latencies, cold, strict=True) if c)
        return chosen[len(chosen) // 2]

    assert p50(busy.latencies, busy.cold) > p50(alone.latencies, alone.cold) + 5 * MS


def test_a_profile_keeps_its_load_hold_through_a_file(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    FleetProfile({"a/m": ModelCost(1, 0.5, 0.25)}, 1, load_hold=7.5).save(path)
    assert FleetProfile.load(path).load_hold == 7.5
    path.write_text('{"measured": 1, "models": {"a/m": {"resident_bytes": 1, "load_s": 0.5, '
                    '"inference_s": 0.25}}}')  # fmt: skip
    assert FleetProfile.load(path).load_hold == 1.0  # written before loads were measured busy
