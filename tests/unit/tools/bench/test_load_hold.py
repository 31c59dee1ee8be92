"""A busy server's loads, measured for the planner's profile: a real server on loopback."""

from __future__ import annotations

from pathlib import Path

import orjson

from tenantserve.tools.bench.fleet_profile import ModelCost
from tenantserve.tools.bench.load_hold import (
    MIN_LOADS,
    LoadHold,
    _body,
    measure_load_hold,
)
from tenantserve.tools.fleet.synth import write_fleet

MB = 1_000_000


def test_a_busy_server_says_how_long_its_loads_held_their_slots(tmp_path: Path) -> None:
    write_fleet(tmp_path / "store", models=24, size_bytes=MB, seed=0)
    ids = sorted(p.parent.name + "/" + p.name for p in (tmp_path / "store").glob("*/*"))
    models = {m: ModelCost(MB, 0.001, 0.0005) for m in ids}  # a quarter: 6 held of 24
    measured = measure_load_hold(
        str(tmp_path / "store"), models, work_dir=tmp_path / "busy", duration_s=3.0
    )
    assert measured.loads >= MIN_LOADS  # 16 clients over 24 models, 6 held: loads all along
    assert measured.held_s > 0
    assert measured.alone_s == 0.001
    assert measured.factor == max(1.0, measured.held_s / 0.001)


def test_the_factor_is_one_when_too_few_loads_say_anything() -> None:
    assert LoadHold(MIN_LOADS - 1, 0.5, 0.001).factor == 1.0
    assert LoadHold(MIN_LOADS, 0.0005, 0.001).factor == 1.0  # never faster than alone
    assert LoadHold(MIN_LOADS, 0.01, 0.001).factor == 10.0


def test_a_request_body_fits_the_models_inputs() -> None:
    inputs = [
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
    ]
    text = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [1],
        "data": ["how do I reset my password"],
    }
    numbers = {"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0, 0, 0]}
    assert orjson.loads(_body({"inputs": inputs})) == {"inputs": [text, numbers]}
