"""JSON log lines carry the model and tenant of the request they were written for."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from fixtures.oip import infer, write_model
from fixtures.server import ThreadServer
from tenantserve.logging import JsonFormatter


class _Lines(logging.Handler):
    """Keeps each record as the JSON line ``configure()`` would write for it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JsonFormatter())
        self.docs: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted here, in the emitting task, as the stderr handler does.
        self.docs.append(orjson.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[_Lines]:
    logger = logging.getLogger("tenantserve")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_a_load_logged_for_a_request_names_its_model_and_tenant(
    tmp_path: Path, start_server: Callable[..., ThreadServer], lines: _Lines
) -> None:
    models = ("acme/m", "globex/sub/m", "initech/m")
    for seed, model in enumerate(models):
        write_model(tmp_path / "store" / model, weight_floats=64, seed=seed)
    server = start_server(tmp_path / "store")
    with httpx.Client(base_url=server.url) as client, ThreadPoolExecutor(3) as pool:
        # Concurrent requests: each line must name its own request's model, not another's.
        statuses = list(pool.map(lambda model: infer(client, model).status_code, models))
    assert statuses == [200, 200, 200]
    for model in models:
        loaded = [doc for doc in lines.docs if str(doc["msg"]).startswith(f"loaded {model} ")]
        assert len(loaded) == 1, lines.docs
        assert loaded[0]["model"] == model
        assert loaded[0]["tenant"] == model.split("/", 1)[0]


def test_lines_outside_a_request_carry_no_model(lines: _Lines) -> None:
    logging.getLogger("tenantserve.test").info("starting")
    assert lines.docs[-1]["msg"] == "starting"
    assert "model" not in lines.docs[-1]
    assert "tenant" not in lines.docs[-1]
