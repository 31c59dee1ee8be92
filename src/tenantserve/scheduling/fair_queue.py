"""FairQueue: per-tenant FIFO queues served in deficit-round-robin turns."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-tenant FIFO queues served in deficit-round-robin turns (Shreedhar & Varghese 1995).

    On its turn a backlogged tenant earns ``quantum`` and takes items while its deficit covers
    their cost; then the next tenant's turn begins. A tenant with a thousand items queued waits
    behind itself: every other tenant with work gets a turn between any two of its items.
    """

    def __init__(self, quantum: float = 1.0) -> None:
        self._quantum = quantum
        self._queues: dict[str, deque[tuple[T, float]]] = {}
        self._deficit: dict[str, float] = {}
        self._turns: deque[str] = deque()  # backlogged tenants; the head holds the turn
        self._credited = False  # whether the head tenant has had its quantum this turn
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def len_of(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue is not None else 0

    def depths(self) -> dict[str, int]:
        """Items queued, by tenant (backlogged tenants only)."""
        return {tenant: len(queue) for tenant, queue in self._queues.items()}

    def push(self, tenant: str, item: T, cost: float = 1.0) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._deficit[tenant] = 0.0
            self._turns.append(tenant)
        queue.append((item, cost))
        self._len += 1

    def pop(self) -> tuple[str, T]:
        """The next item in fair order, with its tenant.

        Raises:
            IndexError: the queue is empty.
        """
        if not self._len:
            raise IndexError("pop from an empty FairQueue")
        while True:
            tenant = self._turns[0]
            queue = self._queues[tenant]
            if not self._credited:
                self._deficit[tenant] += self._quantum
                self._credited = True
            item, cost = queue[0]
            if cost <= self._deficit[tenant]:
                queue.popleft()
                self._len -= 1
                self._deficit[tenant] -= cost
                if not queue:
                    self._retire(tenant)
                return tenant, item
            self._turns.rotate(-1)
            self._credited = False

    def charge(self, tenant: str, cost: float) -> None:
        """Charge ``tenant`` for work beyond its items' costs (a batch holding several
        requests); its deficit may go below zero, and it takes nothing until its turns make
        that up. A tenant with nothing queued is not charged: it waited in no turn."""
        if tenant in self._deficit and cost > 0:
            self._deficit[tenant] -= cost

    def remove(self, tenant: str, item: T) -> bool:
        """Take ``item`` (compared by identity) out of ``tenant``'s queue; ``False`` if absent."""
        queue = self._queues.get(tenant)
        if queue is None:
            return False
        for index, (queued, _) in enumerate(queue):
            if queued is item:
                del queue[index]
                self._len -= 1
                if not queue:
                    self._retire(tenant)
                return True
        return False

    def longest(self) -> tuple[str, int] | None:
        """The tenant with the most items queued, and how many; ``None`` when empty."""
        if not self._queues:
            return None
        tenant = max(self._queues, key=lambda t: len(self._queues[t]))
        return tenant, len(self._queues[tenant])

    def pop_newest(self, tenant: str) -> T:
        """Take the last item ``tenant`` queued (shed first when the queue is full).

        Raises:
            KeyError: ``tenant`` has nothing queued.
        """
        queue = self._queues[tenant]
        item, _ = queue.pop()
        self._len -= 1
        if not queue:
            self._retire(tenant)
        return item

    def _retire(self, tenant: str) -> None:
        # An idle tenant leaves the rotation and forfeits its deficit, as DRR prescribes: credit
        # saved while idle would let it burst ahead of tenants that kept waiting.
        del self._queues[tenant]
        del self._deficit[tenant]
        if self._turns[0] == tenant:
            self._turns.popleft()
            self._credited = False
        else:
            self._turns.remove(tenant)
