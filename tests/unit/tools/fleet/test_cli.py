"""``tenantserve fleet build | synth``: real data in, whole artifacts out, bad input refused."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from fixtures.models import find_datasets
from fixtures.s3 import S3Server
from tenantserve.cli import app
from tenantserve.tools.fleet.synth import write_fleet
from tenantserve.tools.fleet.text import load_banking77, tenant_names


@pytest.fixture(scope="module")
def datasets() -> Path:
    return find_datasets()


def _invoke(*args: str) -> Any:
    # A wide terminal so rich never truncates a tenant name in the summary table.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "model.json").read_text())
    return data


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _assert_artifact(folder: Path) -> dict[str, Any]:
    manifest = _manifest(folder)
    model = (folder / "model.onnx").read_bytes()
    assert manifest["sha256"] == hashlib.sha256(model).hexdigest()
    assert manifest["memory_hint_bytes"] >= len(model)
    assert manifest["postprocess"] == {"top_k": 5, "scores_output": "probabilities"}
    assert len(manifest["labels"]) >= 2
    return manifest


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _banking_rows(datasets: Path, intents: list[str], per_intent: int) -> list[dict[str, str]]:
    rows = load_banking77(datasets / "banking77" / "train.csv")
    out: list[dict[str, str]] = []
    for intent in intents:
        texts = [r.text for r in rows if r.intent == intent][:per_intent]
        out.extend({"text": t, "label": intent} for t in texts)
    return out


def test_banking77_tfidf_fleet_is_built_published_and_summarised(
    datasets: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    result = _invoke("fleet", "build", "--dataset", "banking77", "--tenants", "3",
                     "--store", str(store), "--datasets", str(datasets), "--seed", "3")  # fmt: skip

    assert result.exit_code == 0, result.output
    names = tenant_names(3, seed=3)
    accuracies = []
    for name in names:
        assert name in result.stdout
        manifest = _assert_artifact(store / name / "macros")
        assert 10 <= len(manifest["labels"]) <= 40
        accuracies.append(float(manifest["metadata"]["holdout_accuracy"]))
        assert f"{accuracies[-1]:.1%}" in result.stdout
    assert float(np.mean(accuracies)) >= 0.85
    assert "mean" in result.stdout
    # Only whole artifacts: no temporary folder or file is left beside them.
    kinds = ("json", "onnx", "ort")
    assert _files(store) == sorted(f"{n}/macros/model.{x}" for n in names for x in kinds)


def test_clinc150_tenants_are_domains(datasets: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = _invoke("fleet", "build", "--dataset", "clinc150", "--tenants", "2",
                     "--store", str(store), "--datasets", str(datasets))  # fmt: skip

    assert result.exit_code == 0, result.output
    domains = json.loads((datasets / "clinc150" / "domains.json").read_text())
    built = sorted(p.name for p in store.iterdir())
    assert len(built) == 2
    for tenant in built:
        assert tenant in result.stdout
        manifest = _assert_artifact(store / tenant / "macros")
        assert manifest["labels"] == sorted(domains[tenant.replace("-", "_")])
        assert float(manifest["metadata"]["holdout_accuracy"]) >= 0.8


def test_csv_with_tenant_column_builds_one_model_per_tenant(datasets: Path, tmp_path: Path) -> None:
    acme = _banking_rows(datasets, ["card_arrival", "exchange_rate", "top_up_failed"], 30)
    globex = _banking_rows(datasets, ["lost_or_stolen_card", "pin_blocked"], 30)
    rows = [{**r, "tenant": "acme"} for r in acme] + [{**r, "tenant": "globex"} for r in globex]
    path = _write_csv(tmp_path / "tickets.csv", rows, ["tenant", "text", "label"])
    store = tmp_path / "store"

    result = _invoke("fleet", "build", "--dataset", str(path), "--store", str(store))

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in store.iterdir()) == ["acme", "globex"]
    acme_manifest = _manifest(store / "acme" / "macros")
    assert acme_manifest["labels"] == ["card_arrival", "exchange_rate", "top_up_failed"]
    assert acme_manifest["postprocess"]["top_k"] == 3  # never more macros than it has
    assert _manifest(store / "globex" / "macros")["labels"] == [
        "lost_or_stolen_card",
        "pin_blocked",
    ]
    # 20% of each label is held out: 3 x 6 rows for acme.
    assert acme_manifest["metadata"]["holdout_rows"] == "18"


def test_csv_without_tenant_column_builds_one_model_named_after_the_file(
    datasets: Path, tmp_path: Path
) -> None:
    intents = sorted({r.intent for r in load_banking77(datasets / "banking77" / "train.csv")})
    path = _write_csv(tmp_path / "tickets.csv", _banking_rows(datasets, intents[:12], 20),
                      ["text", "label"])  # fmt: skip
    store = tmp_path / "store"

    result = _invoke("fleet", "build", "--dataset", str(path), "--store", str(store))

    assert result.exit_code == 0, result.output
    assert _files(store) == [f"tickets/macros/model.{x}" for x in ("json", "onnx", "ort")]
    manifest = _assert_artifact(store / "tickets" / "macros")
    assert manifest["labels"] == intents[:12]
    assert float(manifest["metadata"]["holdout_accuracy"]) > 0.5
    assert "warning" not in result.stderr


def test_csv_without_tenant_column_refuses_more_tenants(tmp_path: Path) -> None:
    rows = [{"text": f"ticket {i}", "label": f"l{i % 2}"} for i in range(12)]
    path = _write_csv(tmp_path / "tickets.csv", rows, ["text", "label"])
    store = tmp_path / "store"

    result = _invoke("fleet", "build", "--dataset", str(path), "--tenants", "3",
                     "--store", str(store))  # fmt: skip

    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "no tenant column, so it makes one model (tickets/macros), not --tenants 3" in message
    assert "add a tenant column" in message
    assert not store.exists()


def test_a_model_at_chance_level_is_warned_about(tmp_path: Path) -> None:
    # The text says nothing about the label (the numbers occur once each, below min_df), so
    # the model always answers the commonest label: 60% held out, exactly the majority share.
    rows = [{"text": f"ticket number {i}", "label": "a" if i < 30 else "b"} for i in range(50)]
    path = _write_csv(tmp_path / "noise.csv", rows, ["text", "label"])

    result = _invoke("fleet", "build", "--dataset", str(path), "--store", str(tmp_path / "s"))

    assert result.exit_code == 0, result.output
    assert "60.0%" in result.stdout
    warning = " ".join(result.stderr.split())
    assert (
        "warning: tenant 'noise': held-out accuracy 60.0% is within 5 points of chance (60.0%"
        in warning
    )
    assert "add examples of each" in warning


def _bad_csvs(tmp: Path) -> dict[str, tuple[Path, str]]:
    ok = [{"text": f"ticket {i}", "label": f"l{i % 2}"} for i in range(12)]
    cases = {
        "missing column": (
            _write_csv(tmp / "a.csv", [{"text": "x", "category": "y"}], ["text", "category"]),
            r"missing column\(s\) label",
        ),
        "one label": (
            _write_csv(
                tmp / "b.csv",
                [{**r, "tenant": "good"} for r in ok]
                + [{"text": f"t{i}", "label": "only", "tenant": "solo"} for i in range(9)],
                ["text", "label", "tenant"],
            ),
            r"tenant 'solo' has 1 label",
        ),
        "too few": (
            _write_csv(
                tmp / "c.csv",
                [{**r, "tenant": "tiny"} for r in ok[:8]]
                + [{"text": "a", "label": "rare", "tenant": "tiny"}] * 2,
                ["text", "label", "tenant"],
            ),
            r"tenant 'tiny' has too few examples: label 'rare' has 2",
        ),
        "empty text": (
            _write_csv(tmp / "d.csv", [*ok[:3], {"text": "", "label": "l0"}], ["text", "label"]),
            r"line 5: empty 'text'",
        ),
    }
    latin1 = tmp / "e.csv"
    latin1.write_bytes("text,label\nfine,a\ncaf\xe9 closed,b\n".encode("latin-1"))
    cases["not utf-8"] = (latin1, r"not UTF-8: byte 0xe9 at line 3")
    return cases


@pytest.mark.parametrize("case", ["missing column", "one label", "too few", "empty text",
                                  "not utf-8"])  # fmt: skip
def test_bad_csv_exits_nonzero_naming_the_problem_and_writes_nothing(
    tmp_path: Path, case: str
) -> None:
    path, message = _bad_csvs(tmp_path)[case]
    store = tmp_path / "store"

    result = _invoke("fleet", "build", "--dataset", str(path), "--store", str(store))

    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert re.search(message, " ".join(result.stderr.split())), result.stderr
    assert not store.exists() or _files(store) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "banking78"], "unknown dataset 'banking78'"),
        (["--dataset", "clinc150", "--tenants", "11"], "at most 10"),
        (["--dataset", "banking77", "--kind", "bert"], "bert"),
    ],
)
def test_bad_dataset_or_kind_exits_nonzero(
    datasets: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    store = tmp_path / "store"
    result = _invoke("fleet", "build", *args, "--store", str(store), "--datasets", str(datasets))

    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not store.exists()


def test_synth_writes_models_of_the_asked_size_reproducibly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = _invoke("fleet", "synth", "--models", "3", "--size-mb", "0.5",
                     "--store", str(store), "--seed", "9")  # fmt: skip

    assert result.exit_code == 0, result.output
    ids = [f"tenant-{i:03d}/model-{i:04d}" for i in range(3)]
    reference = write_fleet(tmp_path / "ref", models=3, size_bytes=500_000, seed=9)
    assert reference == ids
    for model_id in ids:
        assert model_id in result.stdout
        model = store / model_id / "model.onnx"
        assert abs(model.stat().st_size - 500_000) < 30_000
        assert model.read_bytes() == (tmp_path / "ref" / model_id / "model.onnx").read_bytes()
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"input": np.ones((2, 16), dtype=np.float32)})
        assert out.shape == (2, 4)
        # Published with its ORT-format copy, which the manifest names with its digest.
        copy = json.loads((store / model_id / "model.json").read_text())["ort_format"]
        ort_bytes = (store / model_id / copy["model_file"]).read_bytes()
        assert copy["sha256"] == hashlib.sha256(ort_bytes).hexdigest()
        assert copy["onnxruntime"] == ort.__version__
    assert len(_files(store)) == 9


def test_serve_does_not_import_the_fleet_builders() -> None:
    code = "import sys, tenantserve.cli; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout  # fmt: skip
    for heavy in ("sklearn", "skl2onnx", "onnx", "tokenizers"):
        assert f"'{heavy}'" not in loaded


@pytest.mark.s3
def test_fleet_publishes_whole_artifacts_to_s3(
    datasets: Path, s3_env: S3Server, tmp_path: Path
) -> None:
    bucket = s3_env.create_bucket()
    url = f"s3://{bucket}/fleet"
    result = _invoke("fleet", "build", "--dataset", "banking77", "--tenants", "2",
                     "--store", url, "--datasets", str(datasets))  # fmt: skip

    assert result.exit_code == 0, result.output
    listed = s3_env.client().list_objects_v2(Bucket=bucket)
    keys = sorted(item["Key"] for item in listed.get("Contents", []))
    names = tenant_names(2, seed=0)
    # The staging prefixes are gone: only the final keys remain.
    kinds = ("json", "onnx", "ort")
    assert keys == sorted(f"fleet/{n}/macros/model.{x}" for n in names for x in kinds)
    body = s3_env.client().get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    manifest = json.loads(body)
    model = s3_env.client().get_object(Bucket=bucket, Key=keys[1])["Body"].read()
    assert manifest["sha256"] == hashlib.sha256(model).hexdigest()

    from tenantserve.store import open_store

    store = open_store(url, cache_dir=tmp_path / "cache", max_cache_bytes=10**9)
    assert store.list() == sorted(f"{n}/macros" for n in names)


@pytest.mark.s3
def test_a_missing_bucket_is_refused_unless_create_bucket_is_given(
    datasets: Path, s3_env: S3Server
) -> None:
    bucket = f"nobucket-{secrets.token_hex(3)}"
    args = ["fleet", "build", "--dataset", "clinc150", "--tenants", "1",
            "--store", f"s3://{bucket}/fleet", "--datasets", str(datasets)]  # fmt: skip

    refused = _invoke(*args)

    assert refused.exit_code == 2, refused.output
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"error: bucket '{bucket}' does not exist at {s3_env.endpoint_url}" in lines[0]
    assert "add --create-bucket" in lines[0]
    buckets = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert bucket not in buckets

    created = _invoke(*args, "--create-bucket")

    assert created.exit_code == 0, created.output
    assert f"created bucket '{bucket}'" in created.stdout
    listed = s3_env.client().list_objects_v2(Bucket=bucket)
    keys = sorted(item["Key"] for item in listed.get("Contents", []))
    assert len(keys) == 3
    assert all(
        key.startswith("fleet/")
        and key.endswith(("/macros/model.json", "/macros/model.onnx", "/macros/model.ort"))
        for key in keys
    )
    # An existing bucket is used as it is, with or without the flag.
    assert _invoke(*args, "--create-bucket").exit_code == 0
    assert _invoke(*args).exit_code == 0


@pytest.mark.s3
def test_unreachable_s3_endpoint_fails_with_one_line(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")

    result = _invoke("fleet", "synth", "--models", "1", "--size-mb", "0.01",
                     "--store", "s3://any/fleet")  # fmt: skip

    assert result.exit_code == 1, result.output
    assert "error: cannot open the store s3://any/fleet: cannot check bucket 'any'" in " ".join(
        result.stderr.split()
    )


def test_a_large_build_summary_shows_the_first_rows_and_the_mean_of_all() -> None:
    from rich.console import Console

    from tenantserve.tools.fleet.build import TenantBuild
    from tenantserve.tools.fleet.cli import _BUILD_ROWS_SHOWN, _summary

    results = [
        TenantBuild(
            f"t{i:04d}-x",
            f"t{i:04d}-x/macros",
            "minilm",
            10,
            800,
            400,
            1.0 if i < _BUILD_ROWS_SHOWN else 0.5,
            1000,
            0.05,
            0.1,
        )
        for i in range(3 * _BUILD_ROWS_SHOWN)
    ]
    console = Console(width=200, record=True)
    console.print(_summary(results, title="big"))
    text = console.export_text()

    assert f"t{_BUILD_ROWS_SHOWN - 1:04d}-x" in text
    assert f"t{_BUILD_ROWS_SHOWN:04d}-x" not in text
    assert f"… {2 * _BUILD_ROWS_SHOWN} more" in text
    assert "66.7%" in text  # the mean of all 300 tenants, not of the rows shown
