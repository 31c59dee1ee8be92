"""ModelLabels: per-model series for the top K models only, the rest under ``other``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tenantserve.activity import OTHER, ModelLabels


def series(registry: CollectorRegistry) -> dict[str, float]:
    values = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "tenantserve_model_requests_total":
                values[sample.labels["model"]] = sample.value
    return values


def count_series(registry: CollectorRegistry) -> int:
    return sum(
        1
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "tenantserve_model_request_seconds_count"
    )


def test_many_models_make_at_most_k_plus_one_series() -> None:
    registry = CollectorRegistry()
    labels = ModelLabels(registry, top_k=5, refresh_s=10.0)
    sent = 0
    now = 0.0
    for round_ in range(20):
        for i in range(200):
            labels.observe(f"tenant{i % 7}/model{i}", 0.01, now)
            sent += 1
            now += 0.01
        values = series(registry)
        assert len(values) <= 5 + 1, round_
        assert count_series(registry) <= 5 + 1
    assert OTHER in values
    # Demoted models lose their series, so the sum is what the current series counted.
    assert sum(values.values()) <= sent


def test_the_hottest_models_take_the_labels_at_refresh() -> None:
    registry = CollectorRegistry()
    labels = ModelLabels(registry, top_k=2, refresh_s=10.0)
    # Two cold models arrive first and take the free labels.
    labels.observe("cold/a", 0.01, 0.0)
    labels.observe("cold/b", 0.01, 0.0)
    for _ in range(50):
        labels.observe("hot/x", 0.01, 1.0)
        labels.observe("hot/y", 0.01, 1.0)
    assert labels.labelled == {"cold/a", "cold/b"}
    assert series(registry)[OTHER] == 100

    labels.observe("hot/x", 0.01, 11.0)  # past refresh_s: the top two take over
    assert labels.labelled == {"hot/x", "hot/y"}
    assert set(series(registry)) == {OTHER, "hot/x"}  # hot/y's series starts with its next one
    labels.observe("hot/y", 0.01, 11.5)
    labels.observe("cold/a", 0.01, 11.5)
    values = series(registry)
    assert set(values) == {OTHER, "hot/x", "hot/y"}
    assert values[OTHER] == 101


def test_k_zero_puts_everything_under_other_and_other_is_never_a_model_label() -> None:
    registry = CollectorRegistry()
    labels = ModelLabels(registry, top_k=0)
    labels.observe("acme/a", 0.01, 0.0)
    labels.observe("other", 0.01, 0.0)
    assert series(registry) == {OTHER: 2}
