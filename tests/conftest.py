"""Shared fixtures: loaded from tests/fixtures/ (models, servers, S3)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

pytest_plugins = [
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
