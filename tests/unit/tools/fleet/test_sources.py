"""Tenant plans: the demo's Banking77 tenants, CLINC150 domains, CSV splits and their refusals."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fixtures.models import TEXT_SEED, TEXT_TENANTS, TextStore, find_datasets
from tenantserve.tools.fleet.sources import (
    MIN_ROWS_PER_LABEL,
    FleetInputError,
    plan_clinc150,
    plan_csv,
    plan_fleet,
)


@pytest.fixture(scope="module")
def datasets() -> Path:
    return find_datasets()


def test_banking77_plans_are_the_tenants_build_text_fleet_makes(
    datasets: Path, text_store: TextStore
) -> None:
    plans = plan_fleet("banking77", tenants=TEXT_TENANTS, seed=TEXT_SEED, datasets_dir=datasets)

    assert [p.model_id for p in plans] == list(text_store.model_ids)
    for plan, report in zip(plans, text_store.reports, strict=True):
        manifest = json.loads((text_store.root / report.model_id / "model.json").read_text())
        assert list(plan.macros) == manifest["labels"]
        assert (len(plan.train), len(plan.holdout)) == (report.train_rows, report.holdout_rows)


def test_clinc150_gives_each_tenant_one_whole_domain(datasets: Path) -> None:
    plans = plan_clinc150(datasets, tenants=10, seed=1)
    domains = json.loads((datasets / "clinc150" / "domains.json").read_text())

    assert sorted(p.tenant for p in plans) == sorted(d.replace("_", "-") for d in domains)
    for plan in plans:
        assert list(plan.macros) == sorted(domains[plan.tenant.replace("-", "_")])
        assert set(Counter(row.intent for row in plan.train).values()) == {80}
        assert set(Counter(row.intent for row in plan.holdout).values()) == {30}
    assert plan_clinc150(datasets, tenants=3, seed=1) == plans[:3]


def test_csv_split_holds_out_every_label_and_keeps_quoted_newlines(tmp_path: Path) -> None:
    lines = ["\ufefftenant,text,label"]
    for i in range(10):
        lines.append(f'acme,"refund\nplease {i}",refund')
        lines.append(f"acme,where is my parcel {i},shipping")
    path = tmp_path / "t.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    (plan,) = plan_csv(path, tenants=None, seed=0)

    assert plan.model_id == "acme/macros"
    assert plan.macros == ("refund", "shipping")
    assert Counter(r.intent for r in plan.holdout) == {"refund": 2, "shipping": 2}
    assert len(plan.train) == 16
    assert not {r.text for r in plan.train} & {r.text for r in plan.holdout}
    assert any("\n" in r.text for r in plan.train)


def test_csv_refuses_a_tenant_name_that_is_not_a_model_id(tmp_path: Path) -> None:
    rows = [f"../etc,ticket {i},l{i % 2}" for i in range(2 * MIN_ROWS_PER_LABEL)]
    path = tmp_path / "t.csv"
    path.write_text("tenant,text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")

    with pytest.raises(FleetInputError, match=r"tenant '\.\./etc' \(first at line 2\)"):
        plan_csv(path, tenants=None, seed=0)


def test_csv_without_tenant_column_is_one_tenant_named_after_the_file(tmp_path: Path) -> None:
    rows = [f"ticket {i},l{i % 2}" for i in range(2 * MIN_ROWS_PER_LABEL)]
    good = tmp_path / "acme-2024.csv"
    good.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    bad = tmp_path / "my tickets.csv"
    bad.write_text(good.read_text(encoding="utf-8"), encoding="utf-8")

    (plan,) = plan_csv(good, tenants=1, seed=0)

    assert plan.model_id == "acme-2024/macros"
    assert plan.macros == ("l0", "l1")
    assert len(plan.train) + len(plan.holdout) == len(rows)
    with pytest.raises(
        FleetInputError, match=r"'my tickets' is not a tenant name.*rename the file"
    ):
        plan_csv(bad, tenants=None, seed=0)


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    with pytest.raises(FleetInputError, match="at least 1"):
        plan_fleet("banking77", tenants=0, seed=0, datasets_dir=tmp_path)
    with pytest.raises(FleetInputError, match="no clinc150"):
        plan_fleet("clinc150", tenants=1, seed=0, datasets_dir=tmp_path)
    with pytest.raises(FleetInputError, match="cannot read"):
        plan_fleet(str(tmp_path / "missing.csv"), tenants=1, seed=0, datasets_dir=None)
