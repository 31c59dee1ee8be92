"""Bad requests against the real server on loopback (RELIABILITY 1-7 and 37).

Cases already covered elsewhere are not repeated here: the decoder's unit tests
(tests/unit/protocols/test_oip_codec.py, test_body.py) and tests/integration/test_bad_input.py
hold the simple shape/name/datatype refusals; these tests add what needs a live server, a
real client or a raw socket. Models are identities of every datatype (``echo/<dtype>``), a
two-input ``echo/add`` and the 16-feature ``acme/good``, so a correct answer can be checked
exactly, not just "not a 500".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import psutil
import pytest
import tritonclient.http as triton
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry

from fixtures.oip import N_FEATURES, write_model
from fixtures.polling import until
from fixtures.server import ProcessServer, ThreadServer, free_port, wait_ready
from tenantserve.config import Settings
from tenantserve.protocols.http_protocol import MAX_HEAD_BYTES, bounded_httptools
from tenantserve.protocols.oip.codec import HEADER_LENGTH as HEADER
from tenantserve.types import DATATYPE_TO_DTYPE

MAX_BODY = 64 * 1024
"""The thread server's body cap: small, so over-cap bodies are cheap to send."""

PROCESS_MAX_BODY = 1024 * 1024
"""The process server's cap (``--max-body 1MiB``), the one its RSS is held to."""

RSS_SLACK = 32 * 1024 * 1024
"""Allowed RSS growth while a 100 MB body or header is pushed at the server. Generous for
allocator noise on a loaded machine, yet a third of what buffering the body would cost."""

_ONNX_TYPES = {
    "BOOL": TensorProto.BOOL, "INT8": TensorProto.INT8, "UINT8": TensorProto.UINT8,
    "INT32": TensorProto.INT32, "INT64": TensorProto.INT64, "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}  # fmt: skip


def _save(folder: Path, graph: onnx.GraphProto) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(folder / "model.onnx"))


def _write_store(root: Path) -> None:
    for datatype, onnx_type in _ONNX_TYPES.items():
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "echo",
            [helper.make_tensor_value_info("x", onnx_type, ["n"])],
            [helper.make_tensor_value_info("y", onnx_type, ["n"])],
        )
        _save(root / "echo" / datatype.lower(), graph)
    add = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"])],
        "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n"]) for n in ("a", "b")],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["n"])],
    )
    _save(root / "echo" / "add", add)
    write_model(root / "acme" / "good", weight_floats=256, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability-store")
    _write_store(root)
    return root


@contextlib.contextmanager
def _thread_server(store: Path, cache_dir: Path, **bounds: float) -> Iterator[ThreadServer]:
    """The real app under uvicorn in a thread, with the protocol ``tenantserve serve`` uses
    (the shared ``start_server`` fixture takes uvicorn's own, and is function-scoped)."""
    from tenantserve.app import build_app  # deferred, as in fixtures.server

    port = free_port()
    settings_ = Settings(
        store=str(store), host="127.0.0.1", port=port, cache_dir=cache_dir, max_body=MAX_BODY
    )
    app = build_app(settings_, registry=CollectorRegistry())
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on",
        http=bounded_httptools(**bounds),  # type: ignore[arg-type]
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    handle = ThreadServer(f"http://127.0.0.1:{port}", app, server, thread)
    try:
        wait_ready(handle.url)
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    with _thread_server(store, tmp_path_factory.mktemp("cache")) as handle:
        yield handle


@pytest.fixture(scope="module")
def process_server(
    store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessServer]:
    """``tenantserve serve`` as users run it (uvloop, httptools), its RSS measurable alone."""
    folder = tmp_path_factory.mktemp("process")
    port = free_port()
    cmd = [
        sys.executable, "-m", "tenantserve", "serve",
        "--store", str(store), "--port", str(port), "--cache-dir", str(folder / "cache"),
        "--max-body", str(PROCESS_MAX_BODY),
    ]  # fmt: skip
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    handle = ProcessServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        wait_ready(handle.url, proc=proc)
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def client(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


# -- raw HTTP/1.1 on a socket ----------------------------------------------------------------


@dataclass
class Reply:
    """What came back on one connection: each response's status, headers and body."""

    responses: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    sent_all: bool = True  # False when the server closed before the whole request was sent
    timed_out: bool = False

    @property
    def statuses(self) -> list[int]:
        return [status for status, _, _ in self.responses]

    def json(self, index: int = 0) -> Any:
        return json.loads(self.responses[index][2])


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")


def parse_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split ``data`` into HTTP responses; uvicorn always sends Content-Length."""
    responses: list[tuple[int, dict[str, str], bytes]] = []
    pos = 0
    while pos < len(data):
        line = _STATUS_LINE.match(data, pos)
        assert line is not None, f"not an HTTP response at byte {pos}: {data[pos : pos + 80]!r}"
        end = data.find(b"\r\n\r\n", line.start())
        if end < 0:
            break  # cut off inside the head (the connection was reset)
        headers: dict[str, str] = {}
        for raw in data[line.end() : end].split(b"\r\n"):
            if raw:
                name, _, value = raw.partition(b":")
                headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()
        status = int(line[1])
        length = 0 if status < 200 else int(headers.get("content-length", "0"))
        responses.append((status, headers, data[end + 4 : end + 4 + length]))
        pos = end + 4 + length
    return responses


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def exchange(
    url: str, request: bytes, *, half_close: bool = False, timeout_s: float = 30.0
) -> Reply:
    """Send ``request`` as raw bytes and read until the server closes the connection."""
    reply = Reply()
    with socket.create_connection(address(url), timeout=timeout_s) as sock:
        try:
            sock.sendall(request)
        except OSError:  # reset: the server refused and closed before reading it all
            reply.sent_all = False
        if half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        data, reply.timed_out = _read_all(sock)
    reply.responses = parse_responses(data)
    return reply


def _read_all(sock: socket.socket) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), True
    except OSError:
        pass  # reset after the answer: what was read stands
    return b"".join(chunks), False


def http_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body and not any(h.lower() == "transfer-encoding" for h in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 1) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]  # fmt: skip
    return b"".join(parts) + b"0\r\n\r\n"


def infer_body(data: Any, datatype: str = "FP32", name: str = "x", **extra: Any) -> bytes:
    shape = list(np.shape(data)) or [1]
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def good_body(rows: int = 1) -> bytes:
    data = np.linspace(-1, 1, rows * N_FEATURES).reshape(rows, N_FEATURES).tolist()
    return infer_body(data, name="input")


def assert_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for needle in needles:
        assert needle.lower() in message.lower(), message


# -- 1: malformed bodies, content types ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "needle"),
    [
        (good_body()[:-7], "application/json", "not valid JSON"),  # truncated
        (good_body()[: len(good_body()) // 2], None, "not valid JSON"),
        (b"", "application/json", "not valid JSON"),
        (b"null", "application/json", "JSON object"),
        (b"[1, 2]", None, "JSON object"),
        (b'"inputs"', None, "JSON object"),
        (b"\xff\xfe{\x00}", None, "not valid JSON"),
        (b'{"inputs": {"name": "input"}}', None, "'inputs'"),
        (good_body(), "text/csv", "Content-Type"),
        (good_body(), "multipart/form-data; boundary=x", "Content-Type"),
        (good_body(), "image/png", "Content-Type"),
    ],
)  # fmt: skip
def test_malformed_oip_bodies_are_400_with_an_error(
    client: httpx.Client, body: bytes, content_type: str | None, needle: str
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/v2/models/acme/good/infer", content=body, headers=headers)
    assert_error(response, 400, needle)
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8",
     "application/x-www-form-urlencoded"],
)  # fmt: skip
def test_no_or_any_json_content_type_is_served(
    server: ThreadServer, content_type: str | None
) -> None:
    # tritonclient sends no Content-Type at all and curl -d sends form encoding: both are JSON.
    headers = {} if content_type is None else {"Content-Type": content_type}
    reply = exchange(server.url, http_request("POST", "/v2/models/acme/good/infer",
                                              good_body(), headers))  # fmt: skip
    assert reply.statuses == [200]
    assert reply.json()["outputs"][0]["name"] == "output"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b'{"instances": [[1,', "application/json"), (b"", None), (b"\xff\xfe", "text/csv"),
     (b"[[1e999]]", None), (b"1,2\n3", "text/csv"), (b"[1]", "application/x-npy"),
     (b'{"instances": [NaN]}', "application/json")],
)  # fmt: skip
def test_malformed_sagemaker_bodies_are_400_for_boto3(
    client: httpx.Client, body: bytes, content_type: str | None
) -> None:
    headers = {"X-Amzn-SageMaker-Target-Model": "echo/fp32"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.post("/invocations", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert response.json()["message"] == response.json()["error"]


def test_a_body_cut_short_by_the_client_costs_only_its_connection(server: ThreadServer) -> None:
    body = good_body()
    cut = http_request("POST", "/v2/models/acme/good/infer", body)[: -len(body) // 2]
    reply = exchange(server.url, cut, half_close=True)
    assert reply.statuses == []  # nobody is left to answer; no 500 is sent either
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert exchange(server.url, http_request("POST", "/v2/models/acme/good/infer",
                                             body)).statuses == [200]  # fmt: skip


# -- 2: inputs that do not match the model, each named -----------------------------------------


@pytest.mark.parametrize(
    ("model", "inputs", "needles"),
    [
        ("echo/add", [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
         ["missing", "'b'"]),
        ("echo/add", [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]},
                      {"name": "b", "datatype": "FP32", "shape": [1], "data": [1]},
                      {"name": "c", "datatype": "FP32", "shape": [1], "data": [1]}],
         ["unexpected", "'c'"]),
        ("echo/fp32", [{"name": "x", "datatype": "FP32", "shape": [0], "data": []}],
         ["'x'", "empty"]),
        ("echo/fp32", [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}],
         ["'x'", "dimensions"]),
        ("acme/good", [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0] * 8}],
         ["'input'"]),
        ("echo/fp32", [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}],
         ["'x'", "FP32"]),
        ("echo/fp32", [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}],
         ["'x'", "holds 3"]),
        ("echo/fp32", [{"name": "x", "datatype": "FP31", "shape": [1], "data": [1]}],
         ["'x'", "FP31"]),
        ("echo/fp32", [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}],
         ["'X'"]),
    ],
)  # fmt: skip
def test_inputs_that_do_not_fit_the_model_are_400_naming_the_input(
    client: httpx.Client, model: str, inputs: list[dict[str, Any]], needles: list[str]
) -> None:
    response = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    assert_error(response, 400, *needles)


def test_the_same_bad_input_is_named_through_sagemaker(client: httpx.Client) -> None:
    response = client.post("/models/echo/add/invoke", json={"instances": [{"a": 1.0}]})
    assert response.status_code == 400
    assert "'b'" in response.json()["error"]


# -- 3: overflow, NaN/Inf, deep nesting, NUL -------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("INT8", 128), ("INT8", -129), ("UINT8", 256), ("UINT8", -1), ("INT32", 2**31),
     ("INT64", 2**63), ("UINT64", -1), ("UINT64", 2**64), ("FP16", 65520), ("FP32", 3.5e38),
     ("FP32", -1e39), ("BOOL", 2), ("INT32", 1.5), ("FP64", "1")],
)  # fmt: skip
def test_values_that_overflow_the_declared_datatype_are_400(
    client: httpx.Client, datatype: str, value: Any
) -> None:
    body = infer_body([value], datatype)
    response = client.post(f"/v2/models/echo/{datatype.lower()}/infer", content=body)
    assert_error(response, 400, "'x'")


@pytest.mark.parametrize(
    ("datatype", "values"),
    [("INT8", [-128, 127]), ("UINT8", [0, 255]), ("INT64", [-(2**63), 2**63 - 1]),
     ("UINT64", [0, 2**64 - 1]), ("FP16", [65504.0, -65504.0]), ("FP64", [1e308, -5e-324]),
     ("FP32", [3.4028234663852886e38, 1.401298464324817e-45]), ("BOOL", [True, False])],
)  # fmt: skip
def test_the_extremes_of_each_datatype_come_back_exactly(
    client: httpx.Client, datatype: str, values: list[Any]
) -> None:
    response = client.post(
        f"/v2/models/echo/{datatype.lower()}/infer", content=infer_body(values, datatype)
    )
    assert response.status_code == 200, response.text
    dtype = DATATYPE_TO_DTYPE[datatype]  # FP32 prints at float32 precision: compare as such
    got = np.array(response.json()["outputs"][0]["data"], dtype=dtype)
    np.testing.assert_array_equal(got, np.array(values, dtype=dtype))


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
def test_nan_and_infinity_in_json_are_400(client: httpx.Client, literal: bytes) -> None:
    body = b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [%s]}]}' % literal
    assert_error(client.post("/v2/models/echo/fp64/infer", content=body), 400, "not valid JSON")


@pytest.mark.parametrize("where", ["data", "parameters", "id"])
def test_ten_thousand_levels_of_nesting_are_400_promptly(client: httpx.Client, where: str) -> None:
    deep = b"[" * 10_000 + b"1" + b"]" * 10_000
    if where == "parameters":
        deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    tensor = b'{"name": "x", "datatype": "FP32", "shape": [1], "data": %s}'
    body = {
        "data": b'{"inputs": [%s]}' % (tensor % deep),
        "parameters": b'{"inputs": [%s], "parameters": %s}' % (tensor % b"[1]", deep),
        "id": b'{"id": %s, "inputs": [%s]}' % (deep, tensor % b"[1]"),
    }[where]
    started = time.monotonic()
    response = client.post("/v2/models/echo/fp32/infer", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert time.monotonic() - started < 30  # no hang (a bound for a loaded 2-core box)


def test_hundreds_of_levels_are_refused_naming_the_input(client: httpx.Client) -> None:
    deep = "[" * 300 + "1" + "]" * 300
    body = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": DEEP}]}'
    body = body.replace("DEEP", deep)
    assert_error(client.post("/v2/models/echo/fp32/infer", content=body), 400, "'x'", "deeper")


NUL_TEXTS = ["a\x00b", "\x00", "\x00\x00tail", "", "plain", "é\x00ü"]


def test_strings_with_nul_come_back_intact_over_json(client: httpx.Client) -> None:
    # Triton's L0_nullchar_string: NUL is data, not a terminator.
    body = infer_body(NUL_TEXTS, "BYTES", id="req\x00id")
    response = client.post("/v2/models/echo/bytes/infer", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == NUL_TEXTS
    assert response.json()["id"] == "req\x00id"


@pytest.mark.parametrize("binary", [False, True])
def test_strings_with_nul_come_back_intact_through_tritonclient(
    server: ThreadServer, binary: bool
) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("x", [len(NUL_TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array(NUL_TEXTS, dtype=object), binary_data=binary)
        outputs = [triton.InferRequestedOutput("y", binary_data=binary)]
        result = client.infer("echo/bytes", [tensor], outputs=outputs).as_numpy("y")
    finally:
        client.close()
    texts = [v.decode() if isinstance(v, bytes) else v for v in result.tolist()]
    assert texts == NUL_TEXTS


@pytest.mark.parametrize(
    "body",
    [infer_body([1.0], name="x\x00"), infer_body([1.0], name="\x00"),
     infer_body([1.0], datatype="FP32\x00"), infer_body([1.0], name="x\ud800")],
)  # fmt: skip
def test_nul_and_lone_surrogates_in_names_are_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v2/models/echo/fp32/infer", content=body)
    assert response.status_code == 400
    assert response.json()["error"]


def test_nul_in_a_sagemaker_target_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/invocations", content=b"[1]", headers={"X-Amzn-SageMaker-Target-Model": "echo/fp\x7f32"}
    )
    assert response.status_code == 400


# -- 4: body and head caps, 100 MB uploads and slow-loris against the process's RSS ---------


class RssWatch:
    """Samples a process's resident set from a thread; ``growth`` is peak minus the start."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.baseline: int = self._proc.memory_info().rss
        self.peak: int = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _warm(url: str) -> None:
    # The model's session is part of the baseline, not of what the uploads cost.
    assert httpx.post(
        f"{url}/v2/models/acme/good/infer", content=good_body(), timeout=60
    ).is_success


def test_a_declared_body_over_the_cap_is_413_before_a_byte_of_it_is_read(
    process_server: ProcessServer,
) -> None:
    head = http_request("POST", "/v2/models/acme/good/infer", headers={
        "Content-Type": "application/json", "Content-Length": str(100 * 1024 * 1024)})  # fmt: skip
    reply = exchange(process_server.url, head)  # the head only: not one byte of the body
    assert reply.statuses == [413]
    assert str(PROCESS_MAX_BODY) in reply.json()["error"]
    assert reply.responses[0][1]["connection"] == "close"


def _push(url: str, head: bytes, chunk: bytes, total: int) -> tuple[int, Reply]:
    """Send ``head`` then ``chunk`` until ``total`` bytes; returns bytes sent and the reply."""
    sent = 0
    with socket.create_connection(address(url), timeout=30) as sock:
        try:
            sock.sendall(head)
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed the connection: the point of the test
        data, timed_out = _read_all(sock)
    return sent, Reply(parse_responses(data), sent >= total, timed_out)


def test_a_100mb_chunked_upload_is_cut_off_at_the_cap_and_rss_stays_flat(
    process_server: ProcessServer,
) -> None:
    _warm(process_server.url)
    head = http_request("POST", "/v2/models/acme/good/infer",
                        headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    mib = b"100000\r\n" + b"1" * 0x100000 + b"\r\n"
    with RssWatch(process_server.pid) as rss:
        sent, reply = _push(process_server.url, head, mib, 100 * len(mib))
    assert sent < 50 * len(mib), "the server read far past its 1 MiB cap"
    assert reply.statuses in ([413], [])  # [] when the reset beat the answer to the client
    print(f"\nRSS growth: {rss.growth / 2**20:.1f} MiB")  # a figure for docs/reliability.md
    assert rss.growth < RSS_SLACK, f"RSS grew {rss.growth / 2**20:.1f} MiB"


def test_a_100mb_header_is_431_and_rss_stays_flat(process_server: ProcessServer) -> None:
    _warm(process_server.url)
    head = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Padding: "
    with RssWatch(process_server.pid) as rss:
        sent, reply = _push(process_server.url, head, b"a" * 0x100000, 100 * 0x100000)
    assert sent < 50 * 0x100000
    assert reply.statuses in ([431], [])
    print(f"\nRSS growth: {rss.growth / 2**20:.1f} MiB")  # a figure for docs/reliability.md
    assert rss.growth < RSS_SLACK, f"RSS grew {rss.growth / 2**20:.1f} MiB"
    # A head just under the cap is still served.
    ok = http_request("GET", "/v2/health/live", headers={"X-Padding": "a" * (MAX_HEAD_BYTES // 2)})
    assert exchange(process_server.url, ok).statuses == [200]


def test_slow_loris_uploads_block_no_one_and_hold_no_memory(process_server: ProcessServer) -> None:
    _warm(process_server.url)
    url = process_server.url
    slow_bodies = [socket.create_connection(address(url), timeout=30) for _ in range(30)]
    slow_heads = [socket.create_connection(address(url), timeout=30) for _ in range(30)]
    declared = http_request("POST", "/v2/models/acme/good/infer", headers={
        "Content-Length": str(PROCESS_MAX_BODY)})  # fmt: skip
    latencies: list[float] = []
    try:
        with RssWatch(process_server.pid) as rss:
            for sock in slow_bodies:
                sock.sendall(declared + b'{"inputs": [')
            for sock in slow_heads:
                sock.sendall(b"POST /v2/models/acme/good/infer HTTP/1.1\r\nHo")
            with httpx.Client(base_url=url, timeout=30) as http:
                for round_ in range(15):  # about 3 s of a few bytes per second per connection
                    for sock in slow_bodies:
                        sock.sendall(b"1.0, ")
                    for sock in slow_heads:
                        sock.sendall(b"s" if round_ else b"st: x\r\nX-Slow: ")
                    started = time.monotonic()
                    response = http.post("/v2/models/acme/good/infer", content=good_body())
                    latencies.append(time.monotonic() - started)
                    assert response.status_code == 200, response.text
                    assert http.get("/v2/health/live").status_code == 200
                    time.sleep(0.2)
        # None of the slow requests was answered: they were all still in progress.
        for sock in slow_bodies + slow_heads:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in slow_bodies + slow_heads:
            sock.close()
    assert max(latencies) < 10, latencies  # generous: served, not starved, on a busy box
    print(f"\nRSS growth: {rss.growth / 2**20:.1f} MiB")  # a figure for docs/reliability.md
    assert rss.growth < RSS_SLACK, f"RSS grew {rss.growth / 2**20:.1f} MiB"


def test_a_head_that_never_finishes_gets_408_and_idle_connections_close(
    store: Path, tmp_path: Path
) -> None:
    with _thread_server(store, tmp_path / "cache", head_timeout_s=0.5) as quick:
        with socket.create_connection(address(quick.url), timeout=30) as slow:
            slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # never finished
            data, timed_out = _read_all(slow)
        assert not timed_out
        assert [s for s, _, _ in parse_responses(data)] == [408]
        with socket.create_connection(address(quick.url), timeout=30) as idle:
            assert _read_all(idle) == (b"", False)  # closed by the server, nothing said
        # A prompt request on a fresh connection is unaffected.
        assert exchange(quick.url, http_request("GET", "/v2/health/live")).statuses == [200]


def test_a_body_that_never_finishes_gets_408(store: Path, tmp_path: Path) -> None:
    with _thread_server(store, tmp_path / "cache", body_timeout_s=0.5) as quick:
        with socket.create_connection(address(quick.url), timeout=30) as slow:
            head = http_request("POST", "/v2/models/acme/good/infer",
                                headers={"Content-Length": "1000"})  # fmt: skip
            slow.sendall(head + b'{"inputs": [')  # and nothing more
            data, timed_out = _read_all(slow)
        assert not timed_out
        replies = parse_responses(data)
        assert [status for status, _, _ in replies] == [408]
        assert b"request body did not arrive" in replies[0][2]
        # A prompt request is unaffected.
        assert exchange(quick.url, http_request("GET", "/v2/health/live")).statuses == [200]


def test_a_connection_past_the_cap_gets_503_at_once(store: Path, tmp_path: Path) -> None:
    with _thread_server(store, tmp_path / "cache", max_connections=3) as capped:
        held = [socket.create_connection(address(capped.url), timeout=30) for _ in range(3)]
        try:
            for sock in held:  # each is open and counted before the next one arrives
                sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert sock.recv(12) == b"HTTP/1.1 200"
            with socket.create_connection(address(capped.url), timeout=30) as extra:
                data, timed_out = _read_all(extra)  # refused before it sends a byte
            assert not timed_out
            ((status, headers, body),) = parse_responses(data)
            assert status == 503
            assert headers.get("retry-after") == "1"
            assert b"connections" in body
        finally:
            for sock in held:
                sock.close()
        until(lambda: exchange(capped.url, http_request("GET", "/v2/health/live")).statuses
              == [200], what="a connection once the others closed")  # fmt: skip


def test_pipelined_large_bodies_are_not_mistaken_for_large_heads(server: ThreadServer) -> None:
    # Reads that end one request's body and begin the next request's head are not counted
    # against the head limit: a 60 KB body before a small head must not look like a big head.
    big = b"[" + b"1," * 30_000 + b"1]"
    first = http_request("POST", "/v2/models/acme/good/infer", big).replace(
        b"Connection: close", b"Connection: keep-alive"
    )
    reply = exchange(server.url, first * 3 + http_request("GET", "/v2/health/live"))
    assert reply.statuses == [400, 400, 400, 200]


def test_unknown_paths_and_wrong_methods_get_json_errors(client: httpx.Client) -> None:
    for path in ["/nope", "/v2/models/acme/go%0Aod/ready", "/v2/health/live/extra"]:
        response = client.get(path)
        assert_error(response, 404, "no such route")
    wrong_method = client.post("/v2/health/live")
    assert_error(wrong_method, 405, "Method Not Allowed")
    assert "GET" in wrong_method.headers["allow"]


# -- 5: chunked bodies ------------------------------------------------------------------------


def test_thousands_of_one_byte_chunks_give_the_same_answer(
    server: ThreadServer, client: httpx.Client
) -> None:
    body = good_body(rows=64)
    assert len(body) > 4000
    expected = client.post("/v2/models/acme/good/infer", content=body).json()
    request = http_request("POST", "/v2/models/acme/good/infer", chunked(body),
                           {"Transfer-Encoding": "chunked"})  # fmt: skip
    reply = exchange(server.url, request)
    assert reply.statuses == [200]
    assert reply.json() == expected


def test_one_byte_chunks_past_the_cap_are_413(server: ThreadServer) -> None:
    request = http_request("POST", "/v2/models/acme/good/infer", chunked(b"1" * (MAX_BODY + 10)),
                           {"Transfer-Encoding": "chunked"})  # fmt: skip
    reply = exchange(server.url, request)
    assert reply.statuses in ([413], [])  # [] when the server's reset beat its answer to us
    assert reply.statuses == [413] or not reply.sent_all


@pytest.mark.parametrize(
    "encoded",
    [b"zz\r\nabc\r\n0\r\n\r\n", b"-5\r\nabc\r\n0\r\n\r\n",
     b"fffffffffffffffffffff\r\nab\r\n0\r\n\r\n",
     b"3\r\nabcdef\r\n0\r\n\r\n", b"3\nabc\n0\n\n", b"3 ; x=\x00\r\nabc\r\n0\r\n\r\n",
     b"".join(b"1;" + b"e" * 200 + b"\r\n{\r\n" for _ in range(500)) + b"0\r\n\r\n"],
)  # fmt: skip
def test_malformed_chunking_is_refused_cleanly(server: ThreadServer, encoded: bytes) -> None:
    request = http_request("POST", "/v2/models/acme/good/infer", encoded,
                           {"Transfer-Encoding": "chunked"})  # fmt: skip
    reply = exchange(server.url, request)
    assert reply.statuses, "no answer"
    assert all(400 <= status < 500 for status in reply.statuses), reply.statuses
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{"Transfer-Encoding": "chunked", "Content-Length": "5"},
     {"Transfer-Encoding": "gzip, chunked"}, {"Transfer-Encoding": "chunked, identity"}],
)  # fmt: skip
def test_conflicting_framing_is_never_served_as_a_different_request(
    server: ThreadServer, headers: dict[str, str]
) -> None:
    body = good_body()
    reply = exchange(server.url, http_request("POST", "/v2/models/acme/good/infer",
                                              chunked(body, 16), headers))  # fmt: skip
    assert reply.statuses, "no answer"
    assert all(status < 500 for status in reply.statuses), reply.statuses
    assert len(reply.statuses) == 1  # no smuggled second request


# -- 6: Triton's binary extension --------------------------------------------------------------


def _binary_request(values: np.ndarray[Any, Any], datatype: str) -> tuple[bytes, int]:
    tensor = triton.InferInput("x", list(values.shape), datatype)
    tensor.set_data_from_numpy(values, binary_data=True)
    outputs = [triton.InferRequestedOutput("y", binary_data=False)]
    body, header_length = triton.InferenceServerClient.generate_request_body([tensor], outputs)
    return body, int(header_length)


def _binary_post(
    client: httpx.Client, model: str, body: bytes, header_length: str | list[str]
) -> httpx.Response:
    values = header_length if isinstance(header_length, list) else [header_length]
    headers = [(HEADER.encode(), value.encode()) for value in values]  # UTF-8 digits too
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def test_a_well_formed_binary_request_matches_json(client: httpx.Client) -> None:
    values = np.array([1.5, -2.25, 3e38], dtype=np.float32)
    body, length = _binary_request(values, "FP32")
    response = _binary_post(client, "echo/fp32", body, str(length))
    assert response.status_code == 200, response.text
    np.testing.assert_array_equal(
        np.array(response.json()["outputs"][0]["data"], dtype=np.float32), values
    )


@pytest.mark.parametrize(
    ("header_length", "needle"),
    [("-1", HEADER), ("abc", HEADER), ("", HEADER), ("+10", HEADER), ("1e2", HEADER),
     ("\u0661\u0662", HEADER), ("99999999999999999999", HEADER), ("BODY+1", HEADER),
     ("0", "not valid JSON"), ("HEADER-1", "not valid JSON"), ("HEADER+1", "not valid JSON")],
)  # fmt: skip
def test_bad_header_lengths_are_400(client: httpx.Client, header_length: str, needle: str) -> None:
    body, length = _binary_request(np.array([1.0, 2.0], dtype=np.float32), "FP32")
    header_length = (
        header_length.replace("BODY+1", str(len(body) + 1))
        .replace("HEADER-1", str(length - 1))
        .replace("HEADER+1", str(length + 1))
    )
    assert_error(_binary_post(client, "echo/fp32", body, header_length), 400, needle)


def test_two_different_header_lengths_are_400(client: httpx.Client) -> None:
    body, length = _binary_request(np.array([1.0, 2.0], dtype=np.float32), "FP32")
    response = _binary_post(client, "echo/fp32", body, [str(length), str(length - 2)])
    assert_error(response, 400, "Inference-Header-Content-Length")


@pytest.mark.parametrize(
    ("size", "payload", "needle"),
    [(8, b"\0" * 4, "past the end"), (4, b"\0" * 4, "needs 8"), (8, b"\0" * 12, "declare 8"),
     (-8, b"\0" * 8, "binary_data_size"), (8.0, b"\0" * 8, "binary_data_size"),
     ("8", b"\0" * 8, "binary_data_size"), (2**70, b"\0" * 8, "binary_data_size")],
)  # fmt: skip
def test_binary_data_size_that_does_not_match_is_400(
    client: httpx.Client, size: Any, payload: bytes, needle: str
) -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2],
              "parameters": {"binary_data_size": size}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    response = _binary_post(client, "echo/fp32", header + payload, str(len(header)))
    assert_error(response, 400, "'x'" if needle != "declare 8" else needle, needle)


def test_binary_bytes_items_must_fit_their_lengths(client: httpx.Client) -> None:
    items = struct.pack("<I", 3) + b"a\x00b" + struct.pack("<I", 50) + b"short"
    tensor = {"name": "x", "datatype": "BYTES", "shape": [2],
              "parameters": {"binary_data_size": len(items)}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()
    response = _binary_post(client, "echo/bytes", header + items, str(len(header)))
    assert_error(response, 400, "'x'", "claims 50 bytes")


# -- 37: curl, httpx and tritonclient get identical answers ----------------------------------


def _curl(url: str, body: bytes, headers: dict[str, str], tmp_path: Path) -> bytes:
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    cmd = ["curl", "--silent", "--show-error", "--fail-with-body", "--data-binary", f"@{path}"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    return subprocess.run([*cmd, url], check=True, capture_output=True, timeout=60).stdout


def test_curl_httpx_and_tritonclient_agree(server: ThreadServer, tmp_path: Path) -> None:
    texts = np.array(NUL_TEXTS, dtype=object)
    url = f"{server.url}/v2/models/echo/bytes/infer"
    as_json = infer_body(NUL_TEXTS, "BYTES")
    results = {
        "curl json": json.loads(_curl(url, as_json, {}, tmp_path))["outputs"][0]["data"],
        "httpx json": httpx.post(url, content=as_json).json()["outputs"][0]["data"],
    }
    tensor = triton.InferInput("x", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(texts, binary_data=True)
    body, length = triton.InferenceServerClient.generate_request_body([tensor], None)
    raw = _curl(url, body, {"Inference-Header-Content-Length": str(length)}, tmp_path)
    # With no outputs named, the answer is binary too: decode it with tritonclient's parser.
    header = re.search(rb"^\{.*?\}\]\}", raw)
    assert header is not None
    parsed = triton.InferenceServerClient.parse_response_body(raw, header_length=header.end())
    results["curl binary"] = [v.decode() for v in parsed.as_numpy("y").tolist()]
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        for binary in (False, True):
            tensor = triton.InferInput("x", [len(texts)], "BYTES")
            tensor.set_data_from_numpy(texts, binary_data=binary)
            out = [triton.InferRequestedOutput("y", binary_data=binary)]
            got = client.infer("echo/bytes", [tensor], outputs=out).as_numpy("y").tolist()
            results[f"tritonclient {binary=}"] = [
                v.decode() if isinstance(v, bytes) else v for v in got
            ]
    finally:
        client.close()
    assert all(value == NUL_TEXTS for value in results.values()), results


# -- 7: a raw-socket fuzzer of the request line and headers -----------------------------------


def fuzz_examples(default: int = 60) -> int:
    """``FUZZ_EXAMPLES`` (``make fuzz`` sets 3000), else a count for ``make test``."""
    return int(os.environ.get("FUZZ_EXAMPLES", str(default)))


_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE",
            b"CONNECT", b"PRI", b"get", b"M-SEARCH"]  # fmt: skip
_PATHS = [b"/v2/models/acme/good/infer", b"/v2/models/acme/good", b"/v2/models/echo/bytes/infer",
          b"/v2/models/acme/good/versions/1/infer", b"/v2/models/", b"/v2/repository/index",
          b"/v2/repository/models/acme/good/load", b"/v2/repository/models/acme/good/unload",
          b"/invocations", b"/endpoints/x/invocations", b"/models", b"/models/acme/good",
          b"/models/acme/good/invoke", b"/v1/status", b"/v1/models/acme/good/pin",
          b"/v2/health/live", b"/metrics", b"/openapi.json", b"/ui/", b"/", b"*",
          b"http://127.0.0.1/v2"]  # fmt: skip
_HEADER_NAMES = [b"Content-Type", b"Content-Length", b"Transfer-Encoding", b"Content-Encoding",
                 b"Inference-Header-Content-Length", b"X-Amzn-SageMaker-Target-Model", b"Accept",
                 b"Expect", b"Connection", b"Authorization", b"X-Api-Key", b"Host", b"Upgrade",
                 b"X-Amz-Date", b"Range"]  # fmt: skip
_HEADER_VALUES = [b"application/json", b"text/csv", b"chunked", b"gzip", b"deflate",
                  b"100-continue", b"-1", b"0", b"18446744073709551616", b"acme/good",
                  b"../../etc/passwd", b"keep-alive", b"close", b"Bearer x", b"h2c", b"*/*",
                  b"AWS4-HMAC-SHA256 Credential=x/y, SignedHeaders=host, Signature=00"]  # fmt: skip
_BODIES = [b"", good_body(), good_body()[:-3], b"{}", b"[1,2,3]", b"1,2\n3,4",
           b'{"instances": [[' + b"1," * 15 + b"1]]}",
           b'{"model_name": "acme/good", "url": "acme/good"}', b"\x00" * 16]  # fmt: skip


def _mostly(common: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """``common`` nine times in ten, else ``odd``: each part is mostly well-formed, so about
    half of the requests get past the HTTP parser into our routes and the rest probe it."""
    return st.integers(0, 9).flatmap(lambda n: odd if n == 0 else common)


_TOKEN = st.from_regex(rb"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,24}\Z")
_PRINTABLE = st.from_regex(rb"\A[\x20-\x7e\t]{0,60}\Z")
_PERCENT = st.binary(max_size=12).map(lambda raw: "".join(f"%{b:02x}" for b in raw).encode())


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request's bytes and whether it declares more body than it sends (a hang by design)."""
    method = draw(_mostly(st.sampled_from(_METHODS), _TOKEN | st.binary(max_size=8)))
    suffix = st.sampled_from([b"", b"/infer", b"/ready", b"/..", b"/%2e%2e/x", b"?a=%zz"])
    path = draw(st.sampled_from(_PATHS)) + draw(
        _mostly(suffix | _PERCENT | _TOKEN.map(lambda t: b"/" + t), st.binary(max_size=24))
    )
    versions = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"", b"HTTP/1.1 x", b"http/1.1"]
    version = draw(_mostly(st.just(b"HTTP/1.1"), st.sampled_from(versions) | st.binary(max_size=9)))
    names = _mostly(st.sampled_from(_HEADER_NAMES) | _TOKEN, st.binary(max_size=16))
    values = _mostly(st.sampled_from(_HEADER_VALUES) | _PRINTABLE, st.binary(max_size=40))
    headers = draw(st.lists(st.tuples(names, values), max_size=4))
    body = draw(st.sampled_from(_BODIES) | st.binary(max_size=300))
    length = draw(
        _mostly(st.sampled_from(["true", "true", "none"]), st.sampled_from(["short", "long"]))
        | _mostly(st.just("true"), st.integers(-3, 2**70))
    )
    lines = [method + b" " + path + b" " + version, b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    declared: int | None = None
    if length == "true":
        declared = len(body)
    elif length == "short":
        declared = max(0, len(body) - draw(st.integers(1, 50)))
    elif length == "long":
        declared = len(body) + draw(st.integers(1, 10_000))
    elif isinstance(length, int):
        declared = length
    if declared is not None:
        lines.append(b"Content-Length: %d" % declared)
    lines.append(b"Connection: close")
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    return request, declared is not None and declared > len(body)


def fuzz_exchange(url: str, request: bytes, waits_for_more: bool) -> Reply:
    """Send, and read what comes back; an unfinished request is half-closed so the server
    sees its end rather than wait (uvicorn waits for a body as long as the client lets it)."""
    with socket.create_connection(address(url), timeout=30) as sock:
        sent_all = True
        try:
            sock.sendall(request)
        except OSError:
            sent_all = False
        if waits_for_more:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5 if not waits_for_more else 30)
        chunks: list[bytes] = []
        timed_out = False
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            # Framing the server still waits on (a chunked body, a lone CR): end it there.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            rest, timed_out = _read_all(sock)
            chunks.append(rest)
        except OSError:
            pass
    return Reply(parse_responses(b"".join(chunks)), sent_all, timed_out)


ALLOWED_5XX = frozenset({503, 507})


@pytest.mark.fuzz
def test_raw_request_line_and_header_fuzzing(process_server: ProcessServer) -> None:
    url = process_server.url
    statuses: Counter[int] = Counter()
    examples = 0
    parser_refusals: Counter[bool] = Counter()  # answered by uvicorn's parser, not our routes
    unexpected: list[tuple[bytes, list[int]]] = []

    @settings(max_examples=fuzz_examples(), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(raw_requests())
    def run(case: tuple[bytes, bool]) -> None:
        nonlocal examples
        request, waits_for_more = case
        reply = fuzz_exchange(url, request, waits_for_more)
        examples += 1
        statuses.update(reply.statuses)
        parser_refusals.update(
            body == b"Invalid HTTP request received." for _, _, body in reply.responses
        )
        bad = [s for s in reply.statuses if s >= 500 and s not in ALLOWED_5XX]
        if bad:
            unexpected.append((request[:300], bad))
        assert not bad, f"{bad} for {request[:300]!r}"
        assert not reply.timed_out, f"no answer and no close for {request[:300]!r}"
        assert process_server.proc.poll() is None, "the server died"
        live = httpx.get(f"{url}/v2/health/live", timeout=30)
        assert live.status_code == 200

    run()
    five_xx = sum(n for status, n in statuses.items() if status >= 500)
    print(
        f"\nfuzz raw-http: {examples} examples, {sum(statuses.values())} responses, "
        f"5xx seen: {five_xx} (unexpected: {len(unexpected)}), "
        f"statuses {dict(sorted(statuses.items()))}, {parser_refusals[False]} reached the routes"
    )
    log = process_server.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert "unexpected error" not in log
