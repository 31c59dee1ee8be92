"""Shared fixtures: loaded from tests/fixtures/ (models, servers, S3)."""

from __future__ import annotations

import gc
import os
from collections.abc import Generator, Iterator

import pytest

pytest_plugins = [
    "fixtures.clients",
    "fixtures.models",
    "fixtures.macros",
    "fixtures.s3",
    "fixtures.faulty_s3",
    "fixtures.server",
    "fixtures.entry_points",
]


@pytest.fixture(autouse=True)
def _collect_garbage_outside_event_loops() -> Iterator[None]:
    """Collect each test's garbage here, where no event loop runs.

    s3fs closes a collected filesystem's aiobotocore session from a finalizer that schedules
    the close on whatever event loop is running at that moment; collected during a later async
    test, that is the test's loop, and the close fails with "attached to a different loop".
    """
    yield
    gc.collect()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "allowed_skips",
        type="linelist",
        help="'<start of a skip reason> | <why it may skip>': the only skips allowed when CI=true",
    )


def _allowed(config: pytest.Config) -> list[str]:
    lines: list[str] = config.getini("allowed_skips")
    return [line.split("|", 1)[0].strip() for line in lines if line.strip()]


def _refuse_unlisted_skip(
    config: pytest.Config, report: pytest.TestReport | pytest.CollectReport
) -> None:
    """Under CI=true, turn a skip whose reason is not on the allowed list into a failure."""
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get("CI") != "true":
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if any(reason.startswith(prefix) for prefix in _allowed(config)):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped for a reason not on the allowed list (allowed_skips in pyproject.toml), "
        f"and CI=true: {reason}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    _refuse_unlisted_skip(item.config, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    _refuse_unlisted_skip(collector.config, report)
    return report
