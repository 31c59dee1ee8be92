"""The vendored datasets: whole (their published digests), licensed, and found without help."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest

from tenantserve.tools.fleet.datasets import (
    DATASETS_ENV,
    bundled_datasets,
    read_data_text,
    resolve_datasets,
)
from tenantserve.tools.fleet.sources import plan_fleet


def _published_digests() -> dict[str, str]:
    readme = (bundled_datasets() / "README.md").read_text("utf-8")
    return dict(re.findall(r"^\| `([\w/]+\.\w+)` \| `([0-9a-f]{64})` \|$", readme, re.M))


def test_every_vendored_file_matches_the_digest_of_its_published_original() -> None:
    digests = _published_digests()
    assert set(digests) == {"banking77/train.csv", "banking77/test.csv", "clinc150/data_full.json"}
    for name, digest in digests.items():
        data = gzip.decompress((bundled_datasets() / f"{name}.gz").read_bytes())
        assert hashlib.sha256(data).hexdigest() == digest, name


def test_each_dataset_keeps_its_licence() -> None:
    assert "Attribution 4.0" in (bundled_datasets() / "banking77" / "LICENSE").read_text("utf-8")
    clinc = (bundled_datasets() / "clinc150" / "LICENSE").read_text("utf-8")
    assert "Attribution 3.0" in clinc


def test_resolve_prefers_the_argument_then_the_variable_then_the_bundled_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATASETS_ENV, raising=False)
    assert resolve_datasets() == bundled_datasets()
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path / "env"))
    assert resolve_datasets() == tmp_path / "env"
    assert resolve_datasets(tmp_path / "arg") == tmp_path / "arg"


def test_plain_files_are_read_before_compressed_ones(tmp_path: Path) -> None:
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(b"compressed"))
    assert read_data_text(tmp_path / "a.csv") == "compressed"
    (tmp_path / "a.csv").write_text("plain", "utf-8")
    assert read_data_text(tmp_path / "a.csv") == "plain"
    with pytest.raises(FileNotFoundError, match=r"no b\.csv \(or b\.csv\.gz\)"):
        read_data_text(tmp_path / "b.csv")


def test_both_datasets_plan_from_the_bundled_copy_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATASETS_ENV, raising=False)
    banking = plan_fleet("banking77", tenants=2, seed=0, datasets_dir=None)
    clinc = plan_fleet("clinc150", tenants=2, seed=0, datasets_dir=None)
    assert [len(p.macros) >= 10 for p in banking] == [True, True]
    assert all(p.train and p.holdout for p in [*banking, *clinc])
    assert {p.source for p in clinc} == {"clinc150"}
