"""schemathesis against our own ``/openapi.json``, served by a live server (RELIABILITY 40).

Every operation is fuzzed with schema-conforming and schema-violating requests. As in
MLServer's own schemathesis tests, ``{model_name}`` (and the SageMaker target header) is
templated to real model ids most of the time, and the body replaced by a valid one some of the
time, so requests reach real models rather than stopping at 404. The server runs with API keys:
most requests carry the operator's key, some a tenant's, a wrong or no key, so the 401/403
answers are fuzzed too. Passing means: no 5xx except the intended 503/507, and every answer's
status, content type, headers and body as the document says.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fixtures.oip import N_FEATURES, write_model
from fixtures.server import ThreadServer

MODEL_IDS = ("acme/good", "acme/other", "solo")
OPERATOR_KEY = "operator-key-0123456789"
TENANT_KEY = "acme-tenant-key-0123456789"
KEYS = {
    "keys": [
        {"name": "operator", "key": OPERATOR_KEY, "scopes": ["*"],
         "roles": ["invoke", "manage", "metrics"]},
        {"name": "acme", "key": TENANT_KEY, "scopes": ["acme/*"], "roles": ["invoke"]},
    ]
}  # fmt: skip
ALLOWED_5XX = frozenset({503, 507})
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def examples_per_run(runs: int, default: int = 8) -> int:
    """Examples for each operation and generation mode: ``FUZZ_EXAMPLES`` (``make
    fuzz`` sets 3000) shared out over the ``runs``, else ``default`` each for ``make test``."""
    total = os.environ.get("FUZZ_EXAMPLES")
    return default if total is None else max(1, -(-int(total) // runs))


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    store = tmp_path / "store"
    for seed, model_id in enumerate(MODEL_IDS):
        write_model(store / model_id, weight_floats=64, seed=seed)
    return start_server(store, api_keys_json=json.dumps(KEYS))


ROW = [0.25] * N_FEATURES
VALID_BODIES: dict[str, Any] = {
    "infer": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, N_FEATURES],
                          "data": ROW}]},
    "invocations": {"instances": [ROW]},
    "invoke": {"instances": [ROW]},
}  # fmt: skip


def _auth(choice: int) -> dict[str, str]:
    """Mostly the operator; then a tenant key, a wrong key, none (or what schemathesis
    generated from the security schemes)."""
    return [
        {"Authorization": f"Bearer {OPERATOR_KEY}"},
        {"Authorization": f"Bearer {OPERATOR_KEY}"},
        {"Authorization": f"Bearer {OPERATOR_KEY}"},
        {"X-Api-Key": TENANT_KEY},
        {"X-Api-Key": "not-a-key-of-this-server"},
        {},
    ][choice]


def _template(case: schemathesis.Case[Any], model_id: str | None, valid_body: bool) -> None:
    """Point the case at a real model, and sometimes send a body it can serve."""
    if model_id is None:
        return
    if "model_name" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "model_name": model_id}
    target = "X-Amzn-SageMaker-Target-Model"
    if any(p.name == target for p in case.operation.headers):
        case.headers[target] = model_id
    action = case.path.rsplit("/", 1)[-1]
    if valid_body and case.method.upper() == "POST":
        if action in VALID_BODIES:
            case.media_type = "application/json"
            case.body = VALID_BODIES[action]
        elif case.path == "/models":
            case.body = {"model_name": model_id, "url": model_id}


@dataclass
class Tally:
    """What the fuzzing saw: statuses, examples run, and every unexpected answer."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    examples: int = 0


def fuzz_operation(
    operation: APIOperation[Any, Any, Any, Any],
    mode: schemathesis.GenerationMode,
    url: str,
    tally: Tally,
    examples: int,
) -> None:
    """Send ``examples`` generated requests for ``operation`` and check each answer."""

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        case=operation.as_strategy(generation_mode=mode),
        model_id=st.sampled_from((*MODEL_IDS, None)),
        valid_body=st.booleans(),
        auth=st.integers(0, 5),
    )
    def run(
        case: schemathesis.Case[Any], model_id: str | None, valid_body: bool, auth: int
    ) -> None:
        _template(case, model_id, valid_body)
        headers = _auth(auth)
        if headers:  # the chosen credentials, not ones generated from the security schemes
            for name in ("Authorization", "X-Api-Key"):
                case.headers.pop(name, None)
        response = case.call(base_url=url, headers=headers, timeout=60)
        tally.examples += 1
        tally.statuses[response.status_code] += 1
        where = f"{case.method} {case.formatted_path} ({mode.value})"
        if response.status_code >= 500 and response.status_code not in ALLOWED_5XX:
            tally.failures.append(f"{response.status_code} for {where}: {response.text[:200]}")
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:  # the checks' verdicts: collected, reported at the end
            for failure in group.exceptions:
                tally.failures.append(f"{where}: {failure.title}: {failure.message[:300]!r}")

    try:
        run()
    except Unsatisfiable:
        # Nothing in the operation can be made invalid (no parameters, no body).
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label


@pytest.mark.fuzz
def test_schemathesis_finds_no_server_errors_and_no_schema_drift(server: ThreadServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 20
    tally = Tally()
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    examples = examples_per_run(len(operations) * len(modes))
    for operation in operations:
        for mode in modes:
            fuzz_operation(operation, mode, server.url, tally, examples)
    five_xx = sum(n for status, n in tally.statuses.items() if status >= 500)
    print(
        f"\nfuzz schemathesis: {tally.examples} examples over {len(operations)} operations, "
        f"5xx seen: {five_xx}, statuses {dict(sorted(tally.statuses.items()))}, "
        f"{len(tally.failures)} failures"
    )
    assert tally.statuses[200] > 0  # templating reached real models
    assert not tally.failures, "\n".join(sorted(set(tally.failures))[:40])
