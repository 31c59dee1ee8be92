"""deploy/: the Grafana dashboard and Prometheus alerts parse, and use only metrics we export."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client.parser import text_string_to_metric_families

from fixtures.models import ModelStoreDir
from fixtures.oip import infer
from fixtures.server import ThreadServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "tenantserve.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"

_METRIC = re.compile(r"\btenantserve_[a-z0-9_]+\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"\{([^}]*)\}")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
# Added by Prometheus at scrape time (instance, job), or by histogram buckets (le).
_TARGET_LABELS = {"instance", "job", "le"}


def dashboard_exprs(doc: dict[str, Any]) -> Iterator[str]:
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"]


def alert_exprs(doc: dict[str, Any]) -> Iterator[str]:
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "tenantserve"
    assert doc["title"]
    assert doc["schemaVersion"] >= 36
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    ids = [panel["id"] for panel in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = set()
    for panel in doc["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0
        assert pos["x"] + pos["w"] <= 24
        assert pos["h"] > 0
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs
        assert len(refs) == len(set(refs))
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in panel["targets"])
    wanted = {
        "Invocations by code", "Request latency", "Inference latency", "Hit ratio",
        "Loaded models", "Memory used vs budget", "Loads and evictions per minute",
        "Model load time",
    }  # fmt: skip
    assert wanted <= titles


def test_alert_rules_are_prometheus_rules() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for wanted in ("Thrashing", "BudgetNearlyFull", "HitRatioDrop", "LoadFailures", "Throttling"):
        assert any(wanted in name for name in names), wanted
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")")


@pytest.fixture
def exported(
    tmp_path: Path, synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> dict[str, set[str]]:
    """Every metric a real server exports after some traffic → the label names it carries.

    A series family with no samples yet (a labelled counter nothing has incremented) still
    has its name in the exposition, under the family name without its suffix.
    """
    limits = tmp_path / "limits.toml"
    limits.write_text("[tenants.tenant-002]\nrate_per_s = 0.001\nburst = 1\n")
    server = start_server(synthetic_store.root, tenant_limits=limits)
    with httpx.Client(base_url=server.url) as client:
        for model_id in synthetic_store.model_ids:
            infer(client, model_id)
        assert infer(client, synthetic_store.model_ids[2]).status_code == 429
        unload = client.post(f"/v2/repository/models/{synthetic_store.model_ids[0]}/unload")
        assert unload.status_code == 200
        text = client.get("/metrics").text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels.setdefault(family.name, set())
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
            labels[family.name].update(sample.labels)
    return labels


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_and_label_used_is_exported(
    source: str, exported: dict[str, set[str]]
) -> None:
    if source == "dashboard":
        exprs = list(dashboard_exprs(json.loads(DASHBOARD.read_text())))
    else:
        exprs = list(alert_exprs(yaml.safe_load(ALERTS.read_text())))
    used: set[str] = set()
    for expr in exprs:
        names = set(_METRIC.findall(expr))
        assert names, expr
        known: set[str] = set(_TARGET_LABELS)
        for name in names:
            assert name in exported or _family(name) in exported, f"{name} is not exported"
            known |= exported.get(name, set()) | exported.get(_family(name), set())
        for group in _BY.findall(expr):
            for label in filter(None, (part.strip() for part in group.split(","))):
                assert label in known, f"{label!r} in {expr!r}"
        for matchers in _MATCHER.findall(expr):
            for matcher in filter(None, (part.strip() for part in matchers.split(","))):
                label = re.split(r"[=!~]", matcher, maxsplit=1)[0].strip()
                assert label in known, f"{matcher!r} in {expr!r}"
        used |= names
    if source == "dashboard":
        # The core metrics of src/tenantserve/metrics.py, all of them on the dashboard.
        for name in ("invocations_total", "model_cache_hits_total", "model_cache_misses_total",
                     "loaded_models", "model_loading_wait_seconds_bucket",
                     "model_loading_seconds_bucket", "model_downloading_seconds_bucket",
                     "memory_used_bytes", "memory_budget_bytes", "model_evictions_total",
                     "request_seconds_bucket", "inference_seconds_bucket",
                     "model_requests_total"):  # fmt: skip
            assert f"tenantserve_{name}" in used, name


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
