"""HotList and EventLog: bounded views of who is busy and what happened."""

from __future__ import annotations

from tenantserve.activity import EventLog, HotList


def test_hot_list_ranks_by_requests_with_cold_and_rejected_counts() -> None:
    hot = HotList(capacity=8, window_s=60.0)
    for _ in range(3):
        hot.record("acme", 0.0)
    hot.record("acme", 1.0, miss=True)
    hot.record("beta", 2.0, rejected=True)
    hot.record("beta", 2.0, error=True)

    top = hot.top(5, 3.0)
    assert [(e.key, e.requests, e.misses, e.errors, e.rejected) for e in top] == [
        ("acme", 4, 1, 0, 0),
        ("beta", 2, 0, 1, 1),
    ]
    assert hot.top(1, 3.0)[0].key == "acme"


def test_hot_list_reports_two_windows_then_forgets() -> None:
    hot = HotList(capacity=8, window_s=60.0)
    hot.record("old", 0.0)
    hot.record("new", 70.0)  # a new window; the first is still reported
    assert {e.key for e in hot.top(5, 70.0)} == {"old", "new"}
    assert {e.key for e in hot.top(5, 130.0)} == {"new"}
    assert hot.top(5, 300.0) == []  # quiet for longer than two windows


def test_hot_list_memory_is_bounded_by_its_capacity() -> None:
    hot = HotList(capacity=4, window_s=60.0)
    for i in range(1000):
        hot.record(f"tenant{i}", 1.0, miss=True)
    for _ in range(50):
        hot.record("heavy", 1.0)
    top = hot.top(10, 1.0)
    assert len(top) == 4
    assert top[0].key == "heavy"
    assert top[0].misses == 0
    assert top[0].error_bound > 0


def test_event_log_keeps_the_newest_and_folds_repeated_rejections() -> None:
    log = EventLog(capacity=3)
    log.add(1.0, "load", "acme/a", nbytes=10, seconds=0.5)
    for t in (2.0, 2.5, 3.0):
        log.add(t, "rejected", "acme/a", detail="TenantLimitExceeded")
    log.add(20.0, "rejected", "acme/a", detail="TenantLimitExceeded")  # too late to fold
    log.add(21.0, "evict", "acme/b", nbytes=7)
    log.add(22.0, "load_failed", "acme/c", detail="bad graph")

    events = log.newest(10)
    assert [(e.kind, e.model_id) for e in events] == [
        ("load_failed", "acme/c"),
        ("evict", "acme/b"),
        ("rejected", "acme/a"),
    ]
    assert [e.seq for e in events] == [5, 4, 3]
    folded = log.newest(10)[2]
    assert (folded.count, folded.time_s, folded.last_s) == (1, 20.0, 20.0)
    assert len(log.newest(2)) == 2


def test_event_log_folds_within_seconds_and_returns_copies() -> None:
    log = EventLog()
    for t in (1.0, 1.5, 2.0):
        log.add(t, "rejected", "t/m", detail="Overloaded")
    (event,) = log.newest(5)
    assert (event.count, event.time_s, event.last_s) == (3, 1.0, 2.0)
    event.count = 99
    assert log.newest(5)[0].count == 3
