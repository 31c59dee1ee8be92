"""Fleets from ``tenantserve fleet build`` served by the real server answer as the models do.

MiniLM and TF-IDF tenants built from Banking77 by the fleet code (MiniLM on small slices, so
the build takes seconds on two idle cores), a TF-IDF fleet built by the CLI into SeaweedFS
and served from ``s3://``; over OIP (tritonclient) and SageMaker (boto3) the served top-5
macros and scores equal those of ONNX Runtime run here on the artifact's own files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from botocore.exceptions import ClientError
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from fixtures.clients import sagemaker_runtime
from fixtures.fleets import per_macro
from fixtures.models import find_datasets
from fixtures.s3 import S3Server
from fixtures.server import ThreadServer
from tenantserve.tools.fleet.build import build_fleet
from tenantserve.tools.fleet.publish import open_publisher
from tenantserve.tools.fleet.sources import TenantPlan, plan_banking77

SEED = 0
TENANTS = 2
# Rows per macro: enough for a useful head, few enough that embedding takes seconds.
TRAIN_PER_MACRO = 12
HOLDOUT_PER_MACRO = 4
TICKETS = 24
TOP_K = 5
TOLERANCE = 1e-5
# Two MiniLM sessions (~93 MB resident each, hinted ~105 MB) and a TF-IDF one, with room.
BUDGET_BYTES = 512 * 1024 * 1024

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tenant:
    """A published tenant model and real Banking77 test tickets of its own macros."""

    model_id: str
    tickets: tuple[str, ...]


@dataclass(frozen=True)
class Fleet:
    """A local store holding MiniLM tenants and one TF-IDF tenant."""

    root: Path
    minilm: tuple[Tenant, ...]
    tfidf: Tenant


@dataclass(frozen=True)
class Ranked:
    """Top-k answers for a batch of tickets: macro names and scores, best first."""

    macros: list[list[str]]
    scores: Floats


def _datasets() -> Path:
    return find_datasets()


def _tickets(plan: TenantPlan, seed: int) -> tuple[str, ...]:
    # Test rows of the tenant's own macros, on one line each so text/plain carries them whole.
    rows = random.Random(seed).sample(plan.holdout, TICKETS)
    return tuple(" ".join(row.text.split()) for row in rows)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Two MiniLM tenants and one TF-IDF tenant, built and published by the fleet code."""
    plans = plan_banking77(_datasets(), tenants=TENANTS, seed=SEED)
    small = [
        dataclasses.replace(
            plan,
            train=per_macro(plan.train, TRAIN_PER_MACRO),
            holdout=per_macro(plan.holdout, HOLDOUT_PER_MACRO),
        )
        for plan in plans
    ]
    root = tmp_path_factory.mktemp("fleet-store")
    publisher = open_publisher(str(root))
    built = build_fleet(small, kind="minilm", publisher=publisher, seed=SEED)
    tfidf_plan = dataclasses.replace(small[0], tenant=f"tfidf-{small[0].tenant}")
    (tfidf,) = build_fleet([tfidf_plan], kind="tfidf", publisher=publisher, seed=SEED)
    minilm = tuple(
        Tenant(result.model_id, _tickets(plan, SEED + i))
        for i, (result, plan) in enumerate(zip(built, plans, strict=True))
    )
    return Fleet(root, minilm, Tenant(tfidf.model_id, _tickets(plans[0], SEED)))


@pytest.fixture
def server(start_server: Callable[..., ThreadServer], fleet: Fleet) -> ThreadServer:
    return start_server(fleet.root, memory_budget=BUDGET_BYTES)


def _sagemaker(url: str) -> Any:
    return sagemaker_runtime(url, read_timeout_s=120)


def _run(session: ort.InferenceSession, values: dict[str, Any]) -> dict[str, Any]:
    """Run ``session`` on the ``values`` it takes; every output by name."""
    feeds = {arg.name: values[arg.name] for arg in session.get_inputs()}
    names = [arg.name for arg in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _minilm_in_process(folder: Path, tickets: Sequence[str]) -> tuple[list[str], Floats]:
    """Labels and probabilities from the artifact's graphs and tokenizer.json, run here.

    The graph is either whole (tokens in, probabilities out) or a head on a declared shared
    ``base`` encoder, which runs first and feeds the head its outputs beside the tokens.
    """
    manifest = json.loads((folder / "model.json").read_text())
    step = manifest["preprocess"]
    tokenizer = Tokenizer.from_file(str(folder / step["tokenizer_file"]))
    tokenizer.enable_truncation(step["max_length"])
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"))
    encodings = tokenizer.encode_batch(list(tickets))
    values: dict[str, Any] = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    cpu = ["CPUExecutionProvider"]
    if "base" in manifest:
        base = folder / manifest["base"]["model_file"]
        values |= _run(ort.InferenceSession(str(base), providers=cpu), values)
    head = ort.InferenceSession(str(folder / manifest["model_file"]), providers=cpu)
    probabilities = _run(head, values)[manifest["postprocess"]["scores_output"]]
    return list(manifest["labels"]), np.asarray(probabilities, dtype=np.float32)


def _tfidf_in_process(
    model: bytes, manifest: dict[str, Any], tickets: Sequence[str]
) -> tuple[list[str], Floats]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = np.array(list(tickets), dtype=object).reshape(-1, 1)
    label, probabilities = session.run(["label", "probabilities"], {"text": batch})
    labels: list[str] = manifest["labels"]
    best = np.asarray(probabilities).argmax(axis=1)
    # The graph's own label output and the manifest's column names agree.
    assert [str(v) for v in label] == [labels[i] for i in best]
    return labels, np.asarray(probabilities, dtype=np.float32)


def _assert_same_answers(served: Ranked, labels: list[str], probabilities: Floats) -> None:
    """Served top-k == the model's own: same best macro, each score its label's probability."""
    k = min(TOP_K, len(labels))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    assert [row[0] for row in served.macros] == [labels[row[0]] for row in order]
    assert served.scores.shape == (len(probabilities), k)
    expected = np.take_along_axis(probabilities, order, axis=1)
    np.testing.assert_allclose(served.scores, expected, rtol=0, atol=TOLERANCE)
    for row, names in enumerate(served.macros):
        columns = [labels.index(name) for name in names]
        np.testing.assert_allclose(
            probabilities[row, columns], served.scores[row], rtol=0, atol=TOLERANCE
        )


def _oip(
    client: triton.InferenceServerClient, model_id: str, tickets: Sequence[str], *, binary: bool
) -> Ranked:
    tensor = triton.InferInput("text", [len(tickets), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(list(tickets), dtype=object).reshape(-1, 1), binary)
    wanted = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("macros", "scores")]
    result = client.infer(model_id, [tensor], outputs=wanted)
    macros = [
        [v.decode() if isinstance(v, bytes) else str(v) for v in row]
        for row in result.as_numpy("macros").tolist()
    ]
    return Ranked(macros, np.asarray(result.as_numpy("scores"), dtype=np.float32))


def _sagemaker_ranked(body: bytes) -> Ranked:
    predictions = json.loads(body)["predictions"]
    macros = [[m["macro"] for m in p["macros"]] for p in predictions]
    scores = np.array([[m["score"] for m in p["macros"]] for p in predictions], np.float32)
    return Ranked(macros, scores)


def _invoke(client: Any, model_id: str, content_type: str, body: bytes) -> Ranked:
    response = client.invoke_endpoint(
        EndpointName="local", TargetModel=model_id, ContentType=content_type, Body=body
    )
    return _sagemaker_ranked(response["Body"].read())


@pytest.mark.slow
def test_minilm_macros_over_oip_equal_the_model_in_process(
    fleet: Fleet, triton_client: triton.InferenceServerClient
) -> None:
    for tenant in fleet.minilm:
        metadata = triton_client.get_model_metadata(tenant.model_id)
        # The server tokenises: clients see one text input, never token tensors.
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]
        labels, probabilities = _minilm_in_process(fleet.root / tenant.model_id, tenant.tickets)
        for binary in (False, True):
            served = _oip(triton_client, tenant.model_id, tenant.tickets, binary=binary)
            _assert_same_answers(served, labels, probabilities)


@pytest.mark.slow
def test_minilm_macros_over_sagemaker_equal_the_model_in_process(
    fleet: Fleet, server: ThreadServer
) -> None:
    client = _sagemaker(server.url)
    for tenant in fleet.minilm:
        labels, probabilities = _minilm_in_process(fleet.root / tenant.model_id, tenant.tickets)
        as_json = _invoke(
            client,
            tenant.model_id,
            "application/json",
            json.dumps({"instances": list(tenant.tickets)}).encode(),
        )
        as_text = _invoke(client, tenant.model_id, "text/plain", "\n".join(tenant.tickets).encode())
        _assert_same_answers(as_json, labels, probabilities)
        assert as_text.macros == as_json.macros
        np.testing.assert_allclose(as_text.scores, as_json.scores, rtol=0, atol=TOLERANCE)


def _kinds(fleet: Fleet) -> dict[str, str]:
    return {"minilm": fleet.minilm[0].model_id, "tfidf": fleet.tfidf.model_id}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["minilm", "tfidf"])
def test_blank_or_undecodable_tickets_over_oip_are_400s_naming_the_input(
    fleet: Fleet, triton_client: triton.InferenceServerClient, kind: str
) -> None:
    model_id = _kinds(fleet)[kind]
    # JSON strings cannot hold bytes that are not UTF-8; the binary tensor extension can.
    for tickets, binary in (
        ([""], False),
        (["my card has not arrived", "  \n"], False),
        ([b"caf\xe9 card"], True),
    ):
        tensor = triton.InferInput("text", [len(tickets), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(tickets, dtype=object).reshape(-1, 1), binary)
        with pytest.raises(InferenceServerException) as caught:
            triton_client.infer(model_id, [tensor])
        assert caught.value.status() == "400"
        assert "input 'text'" in str(caught.value.message())
    # And the tenant still answers real text.
    assert _oip(triton_client, model_id, fleet.tfidf.tickets[:2], binary=False).macros


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["minilm", "tfidf"])
def test_blank_or_undecodable_tickets_over_sagemaker_are_400s(
    fleet: Fleet, server: ThreadServer, kind: str
) -> None:
    model_id = _kinds(fleet)[kind]
    client = _sagemaker(server.url)
    cases = (
        ("application/json", json.dumps({"instances": [""]}).encode(), "input 'text'"),
        ("application/json", b'{"instances": ["card lost", " \\t "]}', "input 'text'"),
        ("text/plain", b"\n \n", "input 'text'"),
        ("text/plain", b"caf\xe9 card\n", "not UTF-8"),
        ("application/json", b'{"instances": ["caf\xe9"]}', "not UTF-8"),
    )
    for content_type, body, needle in cases:
        with pytest.raises(ClientError) as caught:
            client.invoke_endpoint(
                EndpointName="local", TargetModel=model_id, ContentType=content_type, Body=body
            )
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert needle in caught.value.response["Error"]["Message"]


@pytest.mark.slow
def test_an_undecodable_sagemaker_ticket_names_the_input(
    fleet: Fleet, server: ThreadServer
) -> None:
    with pytest.raises(ClientError) as caught:
        _sagemaker(server.url).invoke_endpoint(
            EndpointName="local",
            TargetModel=fleet.tfidf.model_id,
            ContentType="text/plain",
            Body=b"caf\xe9 card\n",
        )
    assert "input 'text'" in caught.value.response["Error"]["Message"]


def _get(s3: Any, bucket: str, key: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


@pytest.mark.s3
@pytest.mark.slow
def test_a_tfidf_fleet_built_into_s3_is_served_from_s3_end_to_end(
    s3_env: S3Server, start_server: Callable[..., ThreadServer]
) -> None:
    datasets = _datasets()
    bucket = s3_env.create_bucket("fleet")
    store = f"s3://{bucket}/fleet"
    built = subprocess.run(
        [sys.executable, "-m", "tenantserve", "fleet", "build", "--dataset", "banking77",
         "--tenants", str(TENANTS), "--kind", "tfidf", "--store", store,
         "--datasets", str(datasets), "--seed", str(SEED)],
        capture_output=True, text=True, timeout=180, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    s3 = s3_env.client()
    keys = sorted(
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    )
    # Published whole: a manifest, its model and its ORT-format copy per tenant, no staging
    # prefix left behind.
    model_ids = [key.removeprefix("fleet/").removesuffix("/model.json") for key in keys]
    model_ids = [m for m in model_ids if m.endswith("/macros")]
    assert len(model_ids) == TENANTS
    names = ("model.json", "model.onnx", "model.ort")
    assert keys == sorted(f"fleet/{m}/{name}" for m in model_ids for name in names)

    plans = {p.model_id: p for p in plan_banking77(datasets, tenants=TENANTS, seed=SEED)}
    server = start_server(store, memory_budget=BUDGET_BYTES)
    oip = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    sagemaker = _sagemaker(server.url)
    try:
        for i, model_id in enumerate(model_ids):
            tickets = _tickets(plans[model_id], SEED + i)
            manifest = json.loads(_get(s3, bucket, f"fleet/{model_id}/model.json"))
            assert manifest["postprocess"] == {"top_k": TOP_K, "scores_output": "probabilities"}
            model = _get(s3, bucket, f"fleet/{model_id}/model.onnx")
            labels, probabilities = _tfidf_in_process(model, manifest, tickets)
            _assert_same_answers(_oip(oip, model_id, tickets, binary=False), labels, probabilities)
            as_json = _invoke(
                sagemaker, model_id, "application/json",
                json.dumps({"instances": list(tickets)}).encode(),
            )  # fmt: skip
            _assert_same_answers(as_json, labels, probabilities)
    finally:
        oip.close()
