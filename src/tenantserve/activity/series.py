"""RequestSeries: requests, hits, errors and latency quantiles per time bucket, in a fixed ring."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

# Log-spaced latency bucket bounds, 0.1 ms to about 29 s (x1.5 each): a quantile read from
# them is off by at most half a step, plenty for a chart, in 33 integers per time bucket.
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(0.0001 * 1.5**i for i in range(32))


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One time bucket; latencies are ``None`` when the bucket saw no request."""

    start_s: float
    requests: int
    hits: int
    misses: int
    errors: int
    rejected: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """The whole window at once: counts and latency quantiles over every bucket."""

    seconds: float
    requests: int
    hits: int
    misses: int
    errors: int
    rejected: int
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None

    @property
    def hit_ratio(self) -> float | None:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else None


@dataclass(slots=True)
class _Bucket:
    index: int = -1  # which bucket_s interval since the epoch this slot holds
    requests: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0
    rejected: int = 0
    latency_max_s: float = 0.0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_S) + 1))

    def reset(self, index: int) -> None:
        self.index = index
        self.requests = self.hits = self.misses = self.errors = self.rejected = 0
        self.latency_max_s = 0.0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS_S) + 1)


class RequestSeries:
    """The last ``buckets`` intervals of ``bucket_s`` seconds; older ones are overwritten."""

    def __init__(self, *, bucket_s: float = 5.0, buckets: int = 120) -> None:
        if bucket_s <= 0 or buckets < 1:
            raise ValueError("bucket_s must be positive and buckets at least 1")
        self.bucket_s = bucket_s
        self.buckets = buckets
        self._ring = [_Bucket() for _ in range(buckets)]

    def record(
        self, now_s: float, *, latency_s: float, hit: bool | None, error: bool, rejected: bool
    ) -> None:
        """Count one request that ended at ``now_s``; ``hit`` is ``None`` when no model was
        looked up (a request turned away before its lease)."""
        bucket = self._slot(now_s)
        bucket.requests += 1
        if hit is not None:
            if hit:
                bucket.hits += 1
            else:
                bucket.misses += 1
        bucket.errors += error
        bucket.rejected += rejected
        bucket.latency_max_s = max(bucket.latency_max_s, latency_s)
        bucket.latency_counts[bisect.bisect_left(LATENCY_BOUNDS_S, latency_s)] += 1

    def points(self, now_s: float) -> list[SeriesPoint]:
        """Every bucket of the window ending with the one holding ``now_s``, oldest first."""
        current = self._index(now_s)
        out = []
        for index in range(current - self.buckets + 1, current + 1):
            bucket = self._ring[index % self.buckets]
            start_s = index * self.bucket_s
            if bucket.index != index:
                out.append(SeriesPoint(start_s, 0, 0, 0, 0, 0, None, None, None))
                continue
            counts, top = bucket.latency_counts, bucket.latency_max_s
            out.append(
                SeriesPoint(
                    start_s, bucket.requests, bucket.hits, bucket.misses, bucket.errors,
                    bucket.rejected, _quantile(counts, 0.5, top), _quantile(counts, 0.95, top),
                    top if bucket.requests else None,
                )
            )  # fmt: skip
        return out

    def summary(self, now_s: float) -> WindowSummary:
        current = self._index(now_s)
        live = [b for b in self._ring if current - self.buckets < b.index <= current]
        counts = [sum(column) for column in zip(*(b.latency_counts for b in live), strict=True)]
        requests = sum(b.requests for b in live)
        top = max((b.latency_max_s for b in live), default=0.0)
        return WindowSummary(
            seconds=self.bucket_s * self.buckets,
            requests=requests,
            hits=sum(b.hits for b in live),
            misses=sum(b.misses for b in live),
            errors=sum(b.errors for b in live),
            rejected=sum(b.rejected for b in live),
            p50_s=_quantile(counts, 0.5, top) if live else None,
            p95_s=_quantile(counts, 0.95, top) if live else None,
            p99_s=_quantile(counts, 0.99, top) if live else None,
            max_s=top if requests else None,
        )

    def _index(self, now_s: float) -> int:
        return math.floor(now_s / self.bucket_s)

    def _slot(self, now_s: float) -> _Bucket:
        index = self._index(now_s)
        bucket = self._ring[index % self.buckets]
        if bucket.index != index:
            bucket.reset(index)
        return bucket


def _quantile(counts: list[int], q: float, top_s: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q``, never above the largest seen."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            bound = LATENCY_BOUNDS_S[i] if i < len(LATENCY_BOUNDS_S) else top_s
            return min(bound, top_s)
    return top_s
