"""ModelLabels: per-model request metrics for the top-K hot models, the rest as ``other``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from tenantserve.activity.space_saving import SpaceSaving

OTHER = "other"

# The same bounds as tenantserve_request_seconds, so the two can be compared bucket by bucket.
_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ModelLabels:
    """``tenantserve_model_requests_total{model}`` and ``tenantserve_model_request_seconds{model}``.

    At most ``top_k`` models have a label of their own; the rest share ``other``, so the
    series count is bounded by ``top_k + 1`` however many models the fleet holds. Which
    models are labelled is decided again every ``refresh_s`` from space-saving counts that
    halve at each refresh (recent traffic counts most). A model that drops out loses its
    series (a counter reset, which ``rate()`` absorbs); until the first refresh, free labels
    go to the first models seen.

    Not thread-safe: the caller serialises (:class:`~tenantserve.activity.Activity` does).
    """

    def __init__(
        self, registry: CollectorRegistry, *, top_k: int = 10, refresh_s: float = 30.0
    ) -> None:
        self.top_k = top_k
        self.refresh_s = refresh_s
        self._requests = Counter(
            "tenantserve_model_requests",
            f"Inference requests by model: the {top_k} hottest models by name, the rest as "
            f"'{OTHER}'.",
            ["model"],
            registry=registry,
        )
        self._seconds = Histogram(
            "tenantserve_model_request_seconds",
            "Request time inside the service (admission, model lease, predict), by model as "
            "tenantserve_model_requests_total.",
            ["model"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self._counts: SpaceSaving[str] = SpaceSaving(max(4 * top_k, 32))
        self._labelled: set[str] = set()
        # labels() costs a lock and a tuple hash per call; at most top_k + 1 children are kept.
        self._children: dict[str, tuple[Counter, Histogram]] = {}
        self._next_refresh_s: float | None = None

    @property
    def labelled(self) -> frozenset[str]:
        return frozenset(self._labelled)

    def observe(self, model_id: str, latency_s: float, now_s: float) -> None:
        label = self._label(model_id, now_s)
        children = self._children.get(label)
        if children is None:
            children = (self._requests.labels(label), self._seconds.labels(label))
            self._children[label] = children
        children[0].inc()
        children[1].observe(latency_s)

    def _label(self, model_id: str, now_s: float) -> str:
        self._counts.add(model_id)
        if self._next_refresh_s is None:
            self._next_refresh_s = now_s + self.refresh_s
        elif now_s >= self._next_refresh_s:
            self._refresh()
            self._next_refresh_s = now_s + self.refresh_s
        if model_id in self._labelled:
            return model_id
        if model_id != OTHER and len(self._labelled) < self.top_k:
            self._labelled.add(model_id)
            return model_id
        return OTHER

    def _refresh(self) -> None:
        hot = {key for key, _ in self._counts.top(self.top_k) if key != OTHER}
        for model_id in self._labelled - hot:
            self._children.pop(model_id, None)
            self._requests.remove(model_id)
            self._seconds.remove(model_id)
        # Newly hot models' series start with their next request.
        self._labelled = hot
        self._counts.halve()
