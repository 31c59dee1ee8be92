"""FailedLoads: bounded in count, keeps messages not tracebacks, logs a few lines a second."""

from __future__ import annotations

import logging

import pytest

from tenantserve.cache.failed_loads import FailedLoads
from tenantserve.errors import LoadFailed, ModelNotFound, StoreUnavailable
from tenantserve.types import ModelId


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _raised() -> LoadFailed:
    try:
        raise LoadFailed("the artifact is broken")
    except LoadFailed as exc:
        return exc


def test_a_failure_is_answered_again_without_its_traceback_until_it_expires() -> None:
    clock = _Clock()
    failures = FailedLoads(clock=clock)
    model = ModelId.parse("acme/m")
    failures.record(model, _raised(), ttl_s=30)
    with pytest.raises(LoadFailed, match="the artifact is broken") as again:
        failures.raise_if_recent(model)
    assert again.value.__cause__ is None
    assert again.value.__context__ is None
    clock.now += 31
    failures.raise_if_recent(model)  # expired: tried again
    assert len(failures) == 0


def test_a_store_outage_says_how_long_until_it_is_tried_again() -> None:
    clock = _Clock()
    failures = FailedLoads(clock=clock)
    model = ModelId.parse("acme/m")
    failures.record(model, StoreUnavailable("down"), ttl_s=5)
    clock.now += 2
    with pytest.raises(StoreUnavailable) as again:
        failures.raise_if_recent(model)
    assert again.value.retry_after_s == pytest.approx(3)


def test_thousands_of_missing_ids_stay_within_the_bound() -> None:
    failures = FailedLoads(max_entries=100, clock=_Clock())
    for i in range(3000):
        failures.record(ModelId.parse(f"acme/missing-{i}"), ModelNotFound("x" * 10_000), 30)
    assert len(failures) == 100
    failures.raise_if_recent(ModelId.parse("acme/missing-0"))  # the oldest were dropped
    with pytest.raises(ModelNotFound) as kept:
        failures.raise_if_recent(ModelId.parse("acme/missing-2999"))
    assert len(str(kept.value)) <= 300


def test_warnings_are_rate_limited_and_the_dropped_ones_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    failures = FailedLoads(clock=clock, log=logging.getLogger("test.failed"))
    with caplog.at_level(logging.WARNING, logger="test.failed"):
        for i in range(100):
            failures.warn("load of %s failed", i)
        clock.now += 1
        failures.warn("load of %s failed", "later")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 7  # five, then the count of the dropped ones, then the next
    assert lines[5] == "95 more load failures were not logged"
    assert lines[6] == "load of later failed"
