"""MemoryBudget: bytes reserved and used against one capacity; nothing here decides residency."""

from __future__ import annotations


class MemoryBudget:
    """A byte ledger. Callers reserve before a load and settle to the measured size after."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def fits(self, nbytes: int) -> bool:
        return self.used_bytes + nbytes <= self.capacity_bytes

    def can_ever_fit(self, nbytes: int) -> bool:
        return nbytes <= self.capacity_bytes

    def reserve(self, nbytes: int) -> None:
        self.used_bytes += nbytes

    def release(self, nbytes: int) -> None:
        self.used_bytes -= nbytes
        if self.used_bytes < 0:  # a bookkeeping bug must not hide as negative free space
            raise AssertionError("memory budget released more bytes than were reserved")
