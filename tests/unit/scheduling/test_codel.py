"""CoDel: a burst drains and keeps the whole queue timeout; a standing queue cuts waits."""

from __future__ import annotations

import math

from tenantserve.scheduling.codel import CoDel


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_that_drains_is_not_overload() -> None:
    clock = Clock()
    codel = CoDel(target_s=0.1, interval_s=0.5, clock=clock)
    for waited in (0.3, 0.4, 0.0, 0.2):  # one request left without waiting: it drained
        codel.observe(waited)
        clock.now += 0.1
    clock.now = 0.6
    assert not codel.overloaded
    assert codel.limit_s(5.0) == 5.0


def test_a_standing_queue_cuts_waits_to_twice_the_target_until_it_drains() -> None:
    clock = Clock()
    codel = CoDel(target_s=0.1, interval_s=0.5, clock=clock)
    for _ in range(5):
        codel.observe(0.25)  # every request of the interval waited past the target
        clock.now += 0.1
    clock.now = 0.55
    assert codel.overloaded
    assert codel.limit_s(5.0) == 0.2
    assert codel.limit_s(math.inf) == 0.2
    codel.observe(0.01)  # the next interval sees the queue empty once
    clock.now = 1.1
    assert not codel.overloaded


def test_a_quiet_interval_ends_overload() -> None:
    clock = Clock()
    codel = CoDel(target_s=0.1, interval_s=0.5, clock=clock)
    codel.observe(1.0)
    clock.now = 0.5
    assert codel.overloaded
    clock.now = 1.6  # nothing left a queue for a whole interval: nothing stands
    assert not codel.overloaded


def test_a_tenant_whose_own_queue_stands_is_cut_while_the_others_are_not() -> None:
    clock = Clock()
    codel = CoDel(target_s=0.1, interval_s=0.5, clock=clock)
    for _ in range(5):
        codel.observe(1.5, "hot")  # behind everyone's fair turns, every time
        codel.observe(0.01, "cold")  # passes at once, so the server's queue drains
        clock.now += 0.1
    clock.now = 0.55
    assert not codel.overloaded
    assert codel.tenant_overloaded("hot")
    assert codel.limit_s(5.0, "hot") == 0.2
    assert codel.limit_s(5.0, "cold") == 5.0
    assert codel.limit_s(5.0, "never-seen") == 5.0
    assert codel.limit_s(5.0) == 5.0


def test_tenants_quiet_for_two_intervals_are_forgotten() -> None:
    clock = Clock()
    codel = CoDel(target_s=0.1, interval_s=0.5, clock=clock)
    for i in range(1000):
        codel.observe(0.3, f"t{i}")
    clock.now = 2.5  # past the pruning period: the next departure sweeps the quiet ones
    codel.observe(0.0, "new")
    assert len(codel._tenants) == 1
    assert not codel.tenant_overloaded("t1")
