"""RequestSeries: a fixed ring of time buckets with counts and latency quantiles."""

from __future__ import annotations

import pytest

from tenantserve.activity import RequestSeries


def test_requests_land_in_their_bucket_and_old_buckets_are_forgotten() -> None:
    series = RequestSeries(bucket_s=5.0, buckets=4)
    series.record(100.0, latency_s=0.01, hit=True, error=False, rejected=False)
    series.record(101.0, latency_s=0.02, hit=False, error=True, rejected=False)
    series.record(107.0, latency_s=0.5, hit=None, error=False, rejected=True)

    points = series.points(109.0)
    assert [p.start_s for p in points] == [90.0, 95.0, 100.0, 105.0]
    assert [p.requests for p in points] == [0, 0, 2, 1]
    assert (points[2].hits, points[2].misses, points[2].errors) == (1, 1, 1)
    assert (points[3].rejected, points[3].hits, points[3].misses) == (1, 0, 0)
    assert points[0].p50_s is None
    assert points[3].max_s == 0.5

    # Past the window, the ring has wrapped: old buckets read as empty, and are reused.
    assert [p.requests for p in series.points(126.0)] == [0, 0, 0, 0]
    series.record(126.0, latency_s=0.001, hit=True, error=False, rejected=False)
    assert [p.requests for p in series.points(126.0)] == [0, 0, 0, 1]
    assert series.summary(126.0).requests == 1


def test_quantiles_are_bucket_bounds_never_above_the_largest_seen() -> None:
    series = RequestSeries(bucket_s=1.0, buckets=10)
    for i in range(100):
        series.record(50.0, latency_s=0.001 * (i + 1), hit=True, error=False, rejected=False)
    (point,) = series.points(50.0)[-1:]
    assert point.p50_s is not None
    assert point.p95_s is not None
    assert 0.05 <= point.p50_s <= 0.05 * 1.5
    assert 0.095 <= point.p95_s <= 0.1
    assert point.max_s == pytest.approx(0.1)
    summary = series.summary(50.5)
    assert summary.requests == 100
    assert summary.hit_ratio == 1.0
    assert summary.p99_s is not None
    assert summary.p99_s <= 0.1


def test_an_empty_window_has_no_ratio_or_latency() -> None:
    summary = RequestSeries().summary(1000.0)
    assert (summary.requests, summary.hit_ratio, summary.p50_s, summary.max_s) == (
        0, None, None, None,
    )  # fmt: skip
    assert summary.seconds == 600.0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="bucket"):
        RequestSeries(bucket_s=0)
