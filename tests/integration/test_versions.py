"""Model versions and aliases on a real server: tritonclient HTTP and gRPC, boto3, the CLI.

Each version's model answers its own version number, so every answer says which version
served it.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from fixtures.clients import sagemaker_runtime
from fixtures.server import ThreadServer, free_port
from tenantserve.cli import app

MACROS = "acme/macros"  # versions 1 and 2, no aliases
ALIASED = "acme/aliased"  # versions 1, 2 and 3; aliases.json: stable 1, canary 3
PLAIN = "beta/plain"  # no versions: served as it always was
BROKEN = "beta/broken"  # version 1; aliases.json names a version it does not have
WIDTH = 4


def write_answering(folder: Path, value: float) -> None:
    """A model whose ``output`` is ``value`` for every row: [N, 4] → [N, 1]."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input", "zero"], ["zeros"]),
            helper.make_node("ReduceSum", ["zeros", "axes"], ["summed"], keepdims=1),
            helper.make_node("Add", ["summed", "value"], ["output"]),
        ],
        "answering",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        [
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(np.array(value, np.float32), "value"),
        ],
    )
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "model.onnx"))


@pytest.fixture(scope="module")
def versions_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("versions-store")
    for version in (1, 2):
        write_answering(root / MACROS / str(version), version)
    for version in (1, 2, 3):
        write_answering(root / ALIASED / str(version), version)
    (root / ALIASED / "aliases.json").write_text('{"stable": 1, "canary": 3}')
    write_answering(root / PLAIN, 7)
    write_answering(root / BROKEN / "1", 1)
    (root / BROKEN / "aliases.json").write_text('{"stable": 5}')
    return root


GRPC_PORTS: dict[str, int] = {}


@pytest.fixture
def server(versions_store: Path, start_server: Callable[..., ThreadServer]) -> ThreadServer:
    port = free_port()
    started = start_server(versions_store, grpc_port=port)
    GRPC_PORTS[started.url] = port
    return started


def _grpc_address(server: ThreadServer) -> str:
    return f"127.0.0.1:{GRPC_PORTS[server.url]}"


def _rows(n: int = 2) -> np.ndarray[Any, Any]:
    return np.ones((n, WIDTH), np.float32)


def _http(client: thttp.InferenceServerClient, model: str, version: str = "") -> tuple[float, str]:
    tensor = thttp.InferInput("input", [2, WIDTH], "FP32")
    tensor.set_data_from_numpy(_rows())
    result = client.infer(model, [tensor], model_version=version)
    answer = result.as_numpy("output")
    assert answer is not None
    return float(answer[0, 0]), str(result.get_response()["model_version"])


def _grpc(client: tgrpc.InferenceServerClient, model: str, version: str = "") -> tuple[float, str]:
    tensor = tgrpc.InferInput("input", [2, WIDTH], "FP32")
    tensor.set_data_from_numpy(_rows())
    result = client.infer(model, [tensor], model_version=version)
    answer = result.as_numpy("output")
    assert answer is not None
    return float(answer[0, 0]), result.get_response().model_version


def _post(client: httpx.Client, model: str) -> httpx.Response:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, WIDTH],
                        "data": [1.0] * WIDTH}]}  # fmt: skip
    return client.post(f"/v2/models/{model}/infer", json=body, timeout=60)


def _answer(response: httpx.Response) -> float:
    assert response.status_code == 200, response.text
    return float(response.json()["outputs"][0]["data"][0])


def test_tritonclient_http_reaches_every_version_and_alias(server: ThreadServer) -> None:
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert _http(client, MACROS) == (2.0, "2")  # a bare id: the highest version
        assert _http(client, MACROS, "1") == (1.0, "1")
        assert _http(client, f"{MACROS}@1") == (1.0, "1")
        assert _http(client, ALIASED) == (1.0, "1")  # the stable alias
        assert _http(client, f"{ALIASED}@canary") == (3.0, "3")
        assert _http(client, ALIASED, "canary") == (3.0, "3")
        assert _http(client, ALIASED, "2") == (2.0, "2")
        assert _http(client, PLAIN) == _http(client, PLAIN, "1") == (7.0, "1")

        metadata = client.get_model_metadata(MACROS)
        assert (metadata["name"], metadata["versions"]) == (MACROS, ["1", "2"])
        assert client.get_model_metadata(PLAIN)["versions"] == ["1"]
        assert client.is_model_ready(MACROS, "1")
        index = {(e["name"], e["version"]): e["state"] for e in client.get_model_repository_index()}
        assert index[(MACROS, "1")] == index[(MACROS, "2")] == "READY"
        assert index[(ALIASED, "3")] == "READY"
        assert (PLAIN, "1") in index
    finally:
        client.close()
    # Each version is its own resident model, under its own path.
    resident = {m["id"] for m in httpx.get(f"{server.url}/v1/status", timeout=10).json()["models"]}
    assert {f"{MACROS}/1", f"{MACROS}/2", f"{ALIASED}/1", f"{ALIASED}/3", PLAIN} <= resident
    assert MACROS not in resident


def test_bad_versions_and_aliases_are_refused_naming_the_problem(server: ThreadServer) -> None:
    with httpx.Client(base_url=server.url) as client:
        missing = _post(client, f"{MACROS}/versions/7")
        assert missing.status_code == 404
        assert missing.json()["error"] == f"model {MACROS} has no version 7 (versions: 1, 2)"
        alias = _post(client, f"{ALIASED}@beta")
        assert alias.status_code == 404
        assert alias.json()["error"] == (
            f"model {ALIASED} has no alias 'beta' (aliases: canary, stable)"
        )
        plain = _post(client, f"{PLAIN}/versions/2")
        assert plain.status_code == 404
        assert "no numbered version folders, so it serves version 1 only" in plain.json()["error"]
        invalid = _post(client, f"{MACROS}@0")
        assert invalid.status_code == 400
        assert "'0' of model acme/macros is neither a version number" in invalid.json()["error"]
        both = _post(client, f"{MACROS}@1/versions/2")
        assert both.status_code == 400
        assert "named with @1 and asked for version 2" in both.json()["error"]


def test_bad_promotions_and_a_bad_aliases_file_are_refused_naming_the_problem(
    server: ThreadServer,
) -> None:
    with httpx.Client(base_url=server.url) as client:
        for body, problem in (
            ({"version": "two"}, "version must be a version number of model acme/aliased"),
            ({"version": 2, "alias": "2nd"}, "alias '2nd' is not an alias name"),
            ({"version": 2, "when": "now"}, 'promote takes {"version": 2, "alias": "stable"}'),
        ):
            refused = client.post(f"/v1/models/{ALIASED}/promote", json=body)
            assert refused.status_code == 400, refused.text
            assert problem in refused.json()["error"]
        broken = _post(client, BROKEN)
        assert broken.status_code == 500
        assert broken.json()["error"] == (
            f"aliases.json of model {BROKEN}: {BROKEN}@stable names version 5, which the "
            "model does not have (versions: 1)"
        )
        # The version itself is an ordinary artifact and still serves.
        assert _answer(_post(client, f"{BROKEN}/1")) == 1.0
        # An operator's load of a bare id loads the version it serves.
        loaded = client.post(f"/v2/repository/models/{MACROS}/load")
        assert loaded.json() == {"name": MACROS, "version": "2", "action": "load"}


def test_tritonclient_grpc_reaches_every_version(server: ThreadServer) -> None:
    client = tgrpc.InferenceServerClient(_grpc_address(server))
    try:
        assert _grpc(client, MACROS) == (2.0, "2")
        assert _grpc(client, MACROS, "1") == (1.0, "1")
        assert _grpc(client, f"{ALIASED}@canary") == (3.0, "3")
        assert _grpc(client, ALIASED) == (1.0, "1")
        metadata = client.get_model_metadata(MACROS, as_json=True)
        assert (metadata["name"], metadata["versions"]) == (MACROS, ["1", "2"])
        assert client.is_model_ready(MACROS, "1")
        assert not client.is_model_ready(ALIASED, "2")
        index = client.get_model_repository_index(as_json=True)["models"]
        assert {(e["name"], e.get("version")) for e in index} >= {(MACROS, "1"), (MACROS, "2")}
        with pytest.raises(InferenceServerException) as missing:
            _grpc(client, MACROS, "9")
        assert missing.value.status() == "StatusCode.NOT_FOUND"
        assert "model acme/macros has no version 9 (versions: 1, 2)" in missing.value.message()
    finally:
        client.close()


def test_sagemaker_target_model_reaches_any_version(server: ThreadServer) -> None:
    runtime = sagemaker_runtime(server.url)

    def invoke(target: str) -> float:
        response = runtime.invoke_endpoint(
            EndpointName="local", TargetModel=target, ContentType="application/json",
            Body=json.dumps({"instances": _rows(1).tolist()}),
        )  # fmt: skip
        return float(np.asarray(json.loads(response["Body"].read())["predictions"]).ravel()[0])

    assert invoke(MACROS) == 2.0
    assert invoke(f"{MACROS}@1") == 1.0
    assert invoke(f"{MACROS}/1") == 1.0  # the version's own path: the same model
    assert invoke(f"{ALIASED}@canary") == 3.0
    with pytest.raises(runtime.exceptions.ValidationError):
        invoke(f"{MACROS}@9")


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "220"})


def test_promote_moves_the_alias_and_a_pinned_request_keeps_its_version(
    server: ThreadServer,
) -> None:
    url = ("--url", server.url)
    with httpx.Client(base_url=server.url) as client:
        assert _answer(_post(client, ALIASED)) == 1.0
        promoted = _cli("models", "promote", ALIASED, "2", *url)
        assert promoted.exit_code == 0, promoted.output
        assert promoted.stdout.strip() == f"{ALIASED}@stable is version 2 ({ALIASED}/2)"
        assert _answer(_post(client, ALIASED)) == 2.0
        assert _answer(_post(client, f"{ALIASED}/versions/1")) == 1.0
        assert _answer(_post(client, f"{ALIASED}@canary")) == 3.0
        canary = _cli("models", "promote", ALIASED, "1", "--alias", "canary", *url)
        assert canary.exit_code == 0, canary.output
        assert _answer(_post(client, f"{ALIASED}@canary")) == 1.0

    missing = _cli("models", "promote", ALIASED, "9", *url)
    assert missing.exit_code == 1
    assert f"error: 404: model {ALIASED} has no version 9 (versions: 1, 2, 3)" in missing.stderr
    plain = _cli("models", "promote", PLAIN, "1", *url)
    assert plain.exit_code == 1
    assert "has no numbered version folders" in plain.stderr
    listed = _cli("models", "list", "--all", *url)
    assert listed.exit_code == 0, listed.output
    assert any(ALIASED in line and "│ 3 " in line for line in listed.stdout.splitlines())


def test_a_rollout_under_load_fails_no_request(server: ThreadServer) -> None:
    """Load the new version, swap the alias, the old one drains: no request fails, the bare
    id moves from 1 to 2, requests pinned to version 1 keep it, nothing is evicted."""
    seen: dict[str, Counter[object]] = {"bare": Counter(), "pinned": Counter()}
    promoted = threading.Event()
    after_promote: Counter[object] = Counter()
    stop = threading.Event()

    def hammer(name: str, model: str) -> None:
        with httpx.Client(base_url=server.url) as client:
            while not stop.is_set():
                began_after = promoted.is_set()
                response = _post(client, model)
                got = _answer(response) if response.status_code == 200 else response.status_code
                seen[name][got] += 1
                if name == "bare" and began_after:
                    after_promote[got] += 1

    with httpx.Client(base_url=server.url) as client:
        assert _answer(_post(client, ALIASED)) == 1.0  # version 1 resident and serving
    workers = [
        threading.Thread(target=hammer, args=(name, model))
        for name, model in (("bare", ALIASED), ("bare", ALIASED), ("pinned", f"{ALIASED}@1"))
    ]
    for worker in workers:
        worker.start()
    try:
        _wait_for(lambda: seen["bare"][1.0] >= 20 and seen["pinned"][1.0] >= 10)
        response = httpx.post(
            f"{server.url}/v1/models/{ALIASED}/promote", json={"version": 2}, timeout=60
        )
        assert response.status_code == 200, response.text
        promoted.set()
        _wait_for(lambda: after_promote[2.0] >= 20 and seen["pinned"][1.0] >= 30)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert set(seen["bare"]) == {1.0, 2.0}, seen  # no status code: no failed request
    assert set(seen["pinned"]) == {1.0}, seen
    assert set(after_promote) == {2.0}, after_promote
    status = httpx.get(f"{server.url}/v1/status", timeout=10).json()
    assert {f"{ALIASED}/1", f"{ALIASED}/2"} <= {m["id"] for m in status["models"]}
    assert not [e for e in status["events"] if e["kind"] == "evict"], status["events"]


def _wait_for(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    from fixtures.polling import until

    until(check, timeout_s, what="the load generators' counts")


def test_pins_and_preloads_name_versions_as_requests_do(
    versions_store: Path, start_server: Callable[..., ThreadServer]
) -> None:
    started = start_server(
        versions_store, pin=(MACROS,), preload=(f"{ALIASED}@canary", f"{BROKEN}/*")
    )
    status = httpx.get(f"{started.url}/v1/status", timeout=10).json()
    assert {m["id"]: m["pinned"] for m in status["models"]} == {
        f"{MACROS}/2": True,  # the version the bare id serves at start-up
        f"{ALIASED}/3": False,
        f"{BROKEN}/1": False,  # a pattern matches versions by path
    }
