"""Names, paths, archives and exposure on the real server (RELIABILITY 8-12, 41, 42).

Every refusal here is checked twice: by what the caller gets (400/403/404/500 with a reason)
and by what the store saw. For ``s3://`` stores a recording proxy sits between the server and
SeaweedFS, so "never reached the store" is a count of the store's own requests; for local
stores the cache's miss counter says whether a request got as far as a lease.
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import io
import json
import os
import pickle
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import psutil
import pytest

from fixtures.oip import infer, scrape, write_model
from fixtures.s3 import S3Server
from fixtures.server import ProcessServer, ThreadServer

INFER_BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
).encode()
CSV_BODY = b",".join([b"0.5"] * 16)

# Triton's traversal list and its relatives: each must be refused on every route that takes a
# model name, before the store is asked anything. Several normalise to a real model
# (``acme/../acme/good``) so a server that "cleaned" names instead of refusing them would
# answer 200 and fail the test.
TRAVERSAL_NAMES = (
    "../etc", "../../../../etc/passwd", "a/../b", "acme/../acme/good", "/etc/passwd",
    "model/..", " ..", "..", ".", "./acme/good", "acme/./good", "acme//good", "acme/good/",
    "%2e%2e%2f", "%2e%2e/etc", "..%2f..%2fetc", "acme%2f..%2facme%2fgood", "%252e%252e%252f",
    "..\\..\\etc", "acme\\good", "C:\\Windows\\win.ini", "acme/good\x00.onnx", "\x00", "",
    "   ", "\t", "acme/go od", "\uff0e\uff0e/etc", "acme/..;/good", "acme/good\n", "~root/x",
    "a" * 300,
)  # fmt: skip


# -- raw HTTP: httpx normalises ``..`` out of paths, an attacker's client does not ------------


@dataclass(frozen=True)
class RawReply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    url: str,
    method: str,
    target: bytes,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    body: bytes = b"",
) -> RawReply:
    """Send exactly these bytes as one HTTP/1.1 request; read the answer until close."""
    host, port = url.removeprefix("http://").split(":")
    lines = [
        method.encode() + b" " + target + b" HTTP/1.1",
        b"Host: " + host.encode(),
        b"Connection: close",
        b"Content-Length: " + str(len(body)).encode(),
        *(name + b": " + value for name, value in headers),
    ]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
    return RawReply(int(head.split(b" ", 2)[1]), rest)


def path_spellings(name: str) -> set[bytes]:
    """``name`` as a client could put it in a URL path: raw where HTTP allows, encoded twice."""
    spellings = {quote(name, safe="/").encode(), quote(name, safe="").encode()}
    if name.isascii() and all(33 <= ord(ch) < 127 and ch not in "?#" for ch in name):
        spellings.add(name.encode())
    return spellings


def name_routes(spelling: bytes) -> list[tuple[str, bytes, bytes, bytes]]:
    """Every route that takes a model name in its path: (method, target, content type, body)."""
    json_type, csv_type = b"application/json", b"text/csv"
    return [
        ("POST", b"/v2/models/" + spelling + b"/infer", json_type, INFER_BODY),
        ("POST", b"/v2/models/" + spelling + b"/versions/1/infer", json_type, INFER_BODY),
        ("GET", b"/v2/models/" + spelling, b"", b""),
        ("GET", b"/v2/models/" + spelling + b"/ready", b"", b""),
        ("POST", b"/v2/repository/models/" + spelling + b"/load", b"", b""),
        ("POST", b"/v2/repository/models/" + spelling + b"/unload", b"", b""),
        ("POST", b"/models/" + spelling + b"/invoke", csv_type, CSV_BODY),
        ("GET", b"/models/" + spelling, b"", b""),
        ("DELETE", b"/models/" + spelling, b"", b""),
        ("POST", b"/v1/models/" + spelling + b"/pin", b"", b""),
    ]


def refused(reply: RawReply) -> bool:
    """A 400 or 404 whose body, when the app wrote it, carries an ``error``."""
    if reply.status not in (400, 404):
        return False
    if reply.body.startswith(b"{"):
        return "error" in reply.json()
    return True  # the HTTP parser's own 400 (a NUL or bare control in the request line)


# -- a recording proxy in front of SeaweedFS: what did the store see? --------------------------


@dataclass
class StoreRecorder:
    """Forwards every request to the real S3 server unchanged and notes its method and path."""

    upstream: str
    url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, method: str, path: str) -> None:
        with self._lock:
            self.seen.append((method, path))

    def paths(self) -> list[str]:
        with self._lock:
            return [path for _, path in self.seen]

    def clear(self) -> None:
        with self._lock:
            self.seen.clear()


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as s3fs's aiohttp expects
    server: _RecordingServer

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        recorder = self.server.recorder
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        recorder.note(self.command, self.path)
        host, port = recorder.upstream.removeprefix("http://").split(":")
        upstream = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            # The Host header is passed on as signed, so SigV4 still verifies upstream.
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in ("connection", "keep-alive"):
                    upstream.putheader(name, value)
            upstream.endheaders(body)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # A HEAD answer keeps the object's length: s3fs reads sizes from it.
        length_header = response.getheader("Content-Length", "0")
        self.send_header(
            "Content-Length", length_header if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _RecordingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    recorder: StoreRecorder


@pytest.fixture
def store_recorder(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[StoreRecorder]:
    """The recording proxy, with the AWS environment pointed at it instead of SeaweedFS."""
    recorder = StoreRecorder(s3_env.endpoint_url)
    proxy = _RecordingServer(("127.0.0.1", 0), _Forward)
    proxy.recorder = recorder
    recorder.url = f"http://127.0.0.1:{proxy.server_address[1]}"
    thread = threading.Thread(target=proxy.serve_forever, name="s3-recorder", daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", recorder.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", recorder.url)
    yield recorder
    proxy.shutdown()
    proxy.server_close()
    thread.join(timeout=10)


# -- stores ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running server, its store, and a count of requests that got past validation."""

    server: ThreadServer
    store_url: str
    touches: Callable[[], int]
    recorder: StoreRecorder | None = None


def _write_fleet(root: Path) -> None:
    write_model(root / "acme" / "good", weight_floats=64, seed=1)
    write_model(root / "tenant-a" / "m", weight_floats=64, seed=2)
    write_model(root / "tenant-b" / "m", weight_floats=64, seed=3)
    write_model(root / "tenant-ab" / "m", weight_floats=64, seed=4)
    write_model(root / "TENANT-B" / "m", weight_floats=64, seed=5)


def _misses(server: ThreadServer) -> int:
    # /metrics is keyed when keys are on: read it as the operator.
    with httpx.Client(base_url=server.url, headers={"X-Api-Key": OPS_KEY}) as client:
        return int(scrape(client).get("tenantserve_model_cache_misses_total", 0))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def served(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    start_server: Callable[..., ThreadServer],
) -> Served:
    """The same small fleet in a local folder or in S3 behind the recording proxy.

    ``touches()`` counts cache misses (a lease began: the store would be asked next) and, for
    S3, every request the store itself received.
    """
    tree = tmp_path / "fleet"
    _write_fleet(tree)
    keys = _keys_file(tmp_path)
    if request.param == "local":
        server = start_server(tree, api_keys=keys)
        return Served(server, str(tree), lambda: _misses(server))
    s3: S3Server = request.getfixturevalue("s3_env")
    recorder: StoreRecorder = request.getfixturevalue("store_recorder")
    bucket = s3.create_bucket()
    s3.upload_tree(tree, bucket, "models")
    store_url = f"s3://{bucket}/models"
    server = start_server(store_url, api_keys=keys, store_retry_deadline_s=2.0)
    recorder.clear()  # start-up checked the store root; count only what requests cause
    return Served(server, store_url, lambda: _misses(server) + len(recorder.seen), recorder)


OPS_KEY = "ops-key-manage-everything-0001"
TENANT_A_KEY = "tenant-a-invoke-key-000000001"
TENANT_A_MANAGER = "tenant-a-manage-key-00000001"


def _keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[[keys]]\nname = "ops"\nkey = "{OPS_KEY}"\nscopes = ["*"]\n'
        'roles = ["invoke", "manage", "metrics"]\n\n'
        f'[[keys]]\nname = "tenant-a"\nkey = "{TENANT_A_KEY}"\nscopes = ["tenant-a/*"]\n\n'
        f'[[keys]]\nname = "tenant-a-ops"\nkey = "{TENANT_A_MANAGER}"\nscopes = ["tenant-a/*"]\n'
        'roles = ["invoke", "manage"]\n'
    )
    return path


def _auth(key: str) -> tuple[bytes, bytes]:
    return b"Authorization", b"Bearer " + key.encode()


# -- 8: traversal names on every route and both SageMaker channels --------------------------


def test_traversal_names_are_refused_on_every_route_before_the_store(served: Served) -> None:
    url, ops = served.server.url, _auth(OPS_KEY)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {OPS_KEY}"}) as client:
        assert infer(client, "acme/good").status_code == 200  # the routes work at all
    before = served.touches()
    answers: list[tuple[str, str, RawReply]] = []
    for name in TRAVERSAL_NAMES:
        for spelling in path_spellings(name):
            for method, target, content_type, body in name_routes(spelling):
                headers = [ops] + ([(b"Content-Type", content_type)] if content_type else [])
                reply = raw_request(url, method, target, headers=headers, body=body)
                answers.append((name, target.decode("latin-1"), reply))
        if "\n" in name:
            continue  # a line break ends a header: no client can send it as a value
        header_value = name.encode("utf-8")
        for target in (b"/invocations", b"/endpoints/local/invocations"):
            headers = [ops, (b"Content-Type", b"text/csv"),
                       (b"X-Amzn-SageMaker-Target-Model", header_value)]  # fmt: skip
            reply = raw_request(url, "POST", target, headers=headers, body=CSV_BODY)
            answers.append((name, f"{target.decode()} header", reply))
        load = json.dumps({"model_name": name, "url": name}).encode()
        headers = [ops, (b"Content-Type", b"application/json")]
        reply = raw_request(url, "POST", b"/models", headers=headers, body=load)
        answers.append((name, "POST /models", reply))

    wrong = [(name, where, r.status, r.body[:120]) for name, where, r in answers if not refused(r)]
    assert not wrong, wrong
    assert len(answers) > 500
    assert served.touches() == before  # not one of them reached a lease or the store

    # The counter does move for a valid id that the store does not have.
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {OPS_KEY}"}) as client:
        assert infer(client, "acme/absent").status_code == 404
    assert served.touches() > before


def test_invalid_ids_name_the_problem_without_echoing_controls(served: Served) -> None:
    reply = raw_request(
        served.server.url, "POST", b"/v2/models/acme/..%2F..%2Fetc%00/infer",
        headers=[_auth(OPS_KEY), (b"Content-Type", b"application/json")], body=INFER_BODY,
    )  # fmt: skip
    assert reply.status == 400
    message = reply.json()["error"]
    assert "segment must start with a letter or digit" in message
    assert "\x00" not in message


# -- 9: a tenant's key reaches only its own prefix, by any spelling --------------------------

OTHER_TENANT_SPELLINGS = (
    "tenant-b/m", "tenant-b%2Fm", "tenant-a/../tenant-b/m", "tenant-a/%2e%2e/tenant-b/m",
    "tenant-a%2F..%2Ftenant-b%2Fm", "./tenant-b/m", "/tenant-b/m", "tenant-a//../tenant-b/m",
    "tenant-a/./../tenant-b/m", "tenant-a/m/../../tenant-b/m", "tenant-ab/m", "TENANT-B/m",
    "tenant-a\\..\\tenant-b\\m", "%74enant-b/m", "tenant-b/m/", "tenant-b",
)  # fmt: skip


def test_a_tenant_key_reaches_no_other_tenant_by_any_spelling(served: Served) -> None:
    url, mine = served.server.url, _auth(TENANT_A_KEY)
    with httpx.Client(base_url=url, headers={"X-Api-Key": TENANT_A_KEY}) as client:
        own = infer(client, "tenant-a/m")
        assert own.status_code == 200, own.text
    before = served.touches()
    answers: list[tuple[str, int]] = []
    for spelling in OTHER_TENANT_SPELLINGS:
        for method, target, content_type, body in name_routes(spelling.encode()):
            headers = [mine, (b"Content-Type", content_type)] if content_type else [mine]
            reply = raw_request(url, method, target, headers=headers, body=body)
            answers.append((f"{method} {target.decode()}", reply.status))
        headers = [mine, (b"Content-Type", b"text/csv"),
                   (b"X-Amzn-SageMaker-Target-Model", spelling.encode())]  # fmt: skip
        reply = raw_request(url, "POST", b"/invocations", headers=headers, body=CSV_BODY)
        answers.append((f"header {spelling}", reply.status))
    assert all(status in (400, 403, 404) for _, status in answers), answers
    assert any(status == 403 for _, status in answers)
    assert served.touches() == before  # refused on the id and the scope alone
    if served.recorder is not None:
        assert not [p for p in served.recorder.paths() if "tenant-b" in p.lower()]

    # A manager of tenant-a can neither load nor list the other tenant's models.
    with httpx.Client(base_url=url, headers={"X-Api-Key": TENANT_A_MANAGER}) as client:
        assert client.post("/v2/repository/models/tenant-b/m/load").status_code == 403
        assert client.post("/models", json={"model_name": "tenant-b/m", "url": "tenant-b/m"}
                           ).status_code == 403  # fmt: skip
        assert client.post("/v2/repository/models/tenant-a/m/load").status_code == 200
        index = client.post("/v2/repository/index").json()
        assert {entry["name"] for entry in index} == {"tenant-a/m"}
        assert [m["modelName"] for m in client.get("/models").json()["models"]] == ["tenant-a/m"]


def test_links_in_a_local_store_cannot_cross_tenants(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    """A tenant folder holding a link into another tenant's folder does not serve it."""
    root = tmp_path / "fleet"
    _write_fleet(root)
    (root / "tenant-a" / "alias").symlink_to(root / "tenant-b" / "m")
    linked_file = root / "tenant-a" / "file-link"
    linked_file.mkdir()
    (linked_file / "model.onnx").symlink_to(root / "tenant-b" / "m" / "model.onnx")
    (root / "tenant-a" / "whole").symlink_to(root / "tenant-b")
    # A manifest linked to another tenant's would serve its labels on tenant-a's own model.
    (root / "tenant-b" / "m" / "model.json").write_text('{"labels": ["tenant-b-only"]}')
    write_model(root / "tenant-a" / "manifest-link", weight_floats=64, seed=6)
    (root / "tenant-a" / "manifest-link" / "model.json").symlink_to("../../tenant-b/m/model.json")
    linked = ("tenant-a/alias", "tenant-a/file-link", "tenant-a/whole/m", "tenant-a/manifest-link")
    server = start_server(root, api_keys=_keys_file(tmp_path))
    with httpx.Client(base_url=server.url, headers={"X-Api-Key": TENANT_A_KEY}) as client:
        assert infer(client, "tenant-a/m").status_code == 200
        for model_id in linked:
            # A policy refusal (403), not a server fault: the link, not the caller, is wrong.
            response = infer(client, model_id)
            assert response.status_code == 403, (model_id, response.text)
            assert "resolves" in response.json()["error"], response.text
            assert "outside" in response.json()["error"], response.text
            assert str(root) not in response.text
            assert "tenant-b-only" not in response.text


# -- 10: locations are the configured store and nothing else -------------------------------


@dataclass
class Tripwire:
    """A loopback HTTP listener that records every connection made to it."""

    url: str
    hits: list[bytes]


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    wire = Tripwire(f"http://127.0.0.1:{listener.getsockname()[1]}", [])
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    wire.hits.append(conn.recv(4096))
                except OSError:
                    wire.hits.append(b"")
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield wire
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_load_locations_outside_the_store_are_refused_unfetched(
    served: Served, tripwire: Tripwire
) -> None:
    store = served.store_url.rstrip("/")
    locations = [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        f"{tripwire.url}/latest/meta-data/",
        f"{tripwire.url}/acme/good",
        "file:///etc/passwd",
        "file:///acme/good",
        "/etc/passwd",
        "s3://another-bucket/models/acme/good",
        "s3://another-bucket/acme/good",
        "gs://bucket/acme/good",
        f"{store}/../acme/good",
        f"{store}/acme/../acme/good",
        f"{store}/acme/good/../../tenant-b/m",
        f"{store}-other/acme/good",
        f"{store}/tenant-b/m",  # inside the store, but not the model being named
        "../acme/good",
        "acme/good?x=http://169.254.169.254/",
        "acme/good#fragment",
        "",
    ]
    before = served.touches()
    with httpx.Client(base_url=served.server.url, headers={"X-Api-Key": OPS_KEY}) as client:
        for location in locations:
            response = client.post("/models", json={"model_name": "acme/good", "url": location})
            assert response.status_code == 400, (location, response.text)
            assert "url must" in response.json()["error"]
        assert served.touches() == before
        assert tripwire.hits == []
        # The one accepted form: the model id itself, or the store's URL joined with it.
        loaded = client.post(
            "/models", json={"model_name": "acme/good", "url": f"{store}/acme/good"}
        )
        assert loaded.status_code == 200, loaded.text
        assert not client.get("/models/acme/good").json()["modelUrl"].startswith("http")


def test_manifest_file_names_cannot_point_elsewhere(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    root = tmp_path / "store"
    write_model(root / "tenant-b" / "m", weight_floats=64, seed=3)
    bad_names = [
        "../../tenant-b/m/model.onnx", "/etc/passwd", "file:///etc/passwd",
        "http://169.254.169.254/model.onnx", "..", "sub/model.onnx", "..\\model.onnx",
    ]  # fmt: skip
    for i, name in enumerate(bad_names):
        folder = root / "tenant-a" / f"m{i}"
        write_model(folder, weight_floats=64, seed=10 + i)
        (folder / "model.json").write_text(json.dumps({"model_file": name}))
    server = start_server(root)
    with httpx.Client(base_url=server.url) as client:
        for i, name in enumerate(bad_names):
            response = infer(client, f"tenant-a/m{i}")
            assert response.status_code == 500, (name, response.text)
            assert "model_file" in response.json()["error"]
            assert str(root) not in response.text


# -- 11: hostile archives through the server -----------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def _member(name: str, data: bytes | None = b"weights", kind: bytes = tarfile.REGTYPE,
            linkname: str = "") -> Member:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if data is not None:
        info.size = len(data)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, data


def _tar_gz(members: Sequence[Member]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _hostile_archives(outside: Path, model: bytes) -> dict[str, bytes]:
    good = _member("model.onnx", model)
    return {
        "dotdot": _tar_gz([good, _member("../escaped.txt")]),
        "dotdot-deep": _tar_gz([good, _member("a/../../../escaped.txt")]),
        "absolute": _tar_gz([good, _member(str(outside / "absolute.txt"))]),
        "symlink-out": _tar_gz([_member("model.onnx", None, tarfile.SYMTYPE, str(outside))]),
        "symlink-then-write": _tar_gz(
            [_member("link", None, tarfile.SYMTYPE, str(outside.parent)), _member("link/x")]
        ),
        "hardlink-out": _tar_gz([_member("model.onnx", None, tarfile.LNKTYPE, "/etc/passwd")]),
        "char-device": _tar_gz([good, _member("null", None, tarfile.CHRTYPE)]),
        "block-device": _tar_gz([good, _member("disk", None, tarfile.BLKTYPE)]),
        "fifo": _tar_gz([good, _member("pipe", None, tarfile.FIFOTYPE)]),
        "backslash": _tar_gz([good, _member("..\\escaped.txt")]),
        "duplicate": _tar_gz([good, _member("model.onnx", b"overwrite")]),
        "not-gzip": b"this is not a tarball",
    }


@pytest.fixture(scope="module")
def gigabyte_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A ~5 MB .tar.gz whose one member unpacks to 1 GiB of zeros."""
    info = tarfile.TarInfo("model.onnx")
    info.size = 1 << 30
    buffer = io.BytesIO()
    zeros = bytes(1 << 20)
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1, mtime=0) as packed:
        packed.write(info.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(1024):
            packed.write(zeros)
        packed.write(bytes(1024))  # the two zero blocks that end a tar
    return buffer.getvalue()


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def test_hostile_archives_are_refused_and_write_nothing(
    tmp_path: Path, start_server: Callable[..., ThreadServer], gigabyte_bomb: bytes
) -> None:
    root, outside, cache = tmp_path / "store", tmp_path / "outside", tmp_path / "disk-cache"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep me")
    write_model(tmp_path / "plain", weight_floats=64, seed=1)
    model = (tmp_path / "plain" / "model.onnx").read_bytes()
    archives = _hostile_archives(outside / "keep.txt", model)
    archives["bomb-1GiB"] = gigabyte_bomb
    (root / "evil").mkdir(parents=True)
    for name, data in archives.items():
        (root / "evil" / f"{name}.tar.gz").write_bytes(data)
    (root / "fine").mkdir()
    (root / "fine" / "m.tar.gz").write_bytes(_tar_gz([_member("model.onnx", model)]))
    before = _files(tmp_path)
    server = start_server(root, cache_dir=cache, disk_cache=8 << 20)
    rss_before = psutil.Process().memory_info().rss
    with httpx.Client(base_url=server.url) as client:
        assert infer(client, "fine/m.tar.gz").status_code == 200  # archives work at all
        for name in archives:
            response = infer(client, f"evil/{name}.tar.gz")
            assert response.status_code == 500, (name, response.text)
            error = response.json()["error"]
            assert "archive" in error, (name, error)
            assert str(tmp_path) not in error
    grown = psutil.Process().memory_info().rss - rss_before
    assert grown < 256 << 20, grown  # the bomb was stopped at the cap, not held in memory
    written = _files(tmp_path) - before
    # Only the good archive's unpacked copy was kept; every refused one left nothing.
    assert written
    assert all(p.is_relative_to(cache) for p in written), sorted(written)
    assert not [p for p in written if p.name in ("escaped.txt", "absolute.txt", "x")]
    assert not (tmp_path / "escaped.txt").exists()
    assert not (cache / "escaped.txt").exists()
    assert (outside / "keep.txt").read_text() == "keep me"
    assert sum(p.stat().st_size for p in written) < 1 << 20


# -- 12: pickles are data we never load ------------------------------------------------------


class _Tripwire:
    """Unpickling this creates ``marker``: proof that something ran pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_pickle_joblib_and_skops_artifacts_are_refused_unrun(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Tripwire(marker))
    root = tmp_path / "store"
    artifacts = {
        "acme/sklearn": ("model.pkl", {"runtime": "sklearn", "model_file": "model.pkl"}),
        "acme/joblib": ("model.joblib", {"runtime": "joblib", "model_file": "model.joblib"}),
        "acme/skops": ("model.skops", {"runtime": "skops", "model_file": "model.skops"}),
        "acme/python": ("handler.pkl", {"runtime": "python", "model_file": "handler.pkl"}),
        "acme/disguised": ("model.onnx", None),  # a pickle under the ONNX file name
    }
    for model_id, (file_name, manifest) in artifacts.items():
        (root / model_id).mkdir(parents=True)
        (root / model_id / file_name).write_bytes(payload)
        if manifest is not None:
            (root / model_id / "model.json").write_text(json.dumps(manifest))
    (root / "acme" / "bare.pkl").write_bytes(payload)
    (root / "acme" / "packed.tar.gz").write_bytes(
        _tar_gz([_member("model.pkl", payload),
                 _member("model.json", b'{"runtime": "sklearn", "model_file": "model.pkl"}')])
    )  # fmt: skip
    server = start_server(root)
    with httpx.Client(base_url=server.url) as client:
        for model_id in [*artifacts, "acme/bare.pkl", "acme/packed.tar.gz"]:
            response = infer(client, model_id)
            assert response.status_code == 500, (model_id, response.text)
            if model_id in ("acme/sklearn", "acme/joblib", "acme/skops", "acme/python"):
                assert "is not enabled on this server (enabled: onnx)" in response.json()["error"]
            sagemaker = client.post(
                "/invocations", content=CSV_BODY,
                headers={"X-Amzn-SageMaker-Target-Model": model_id, "Content-Type": "text/csv"},
            )  # fmt: skip
            assert sagemaker.status_code == 500
    assert not marker.exists()


# -- 41: loopback by default; every management route needs a manage key ---------------------


def test_serve_binds_loopback_by_default(
    tmp_path: Path, start_process: Callable[..., ProcessServer]
) -> None:
    server = start_process(tmp_path)  # no --host
    listening = [
        c.laddr for c in psutil.Process(server.pid).net_connections("inet")
        if c.status == psutil.CONN_LISTEN
    ]  # fmt: skip
    assert listening
    assert {addr.ip for addr in listening} <= {"127.0.0.1", "::1"}


MANAGEMENT_ROUTES = (
    ("POST", "/v2/repository/index", None),
    ("POST", "/v2/repository/models/tenant-a/m/load", None),
    ("POST", "/v2/repository/models/tenant-a/m/unload", None),
    ("GET", "/models", None),
    ("POST", "/models", {"model_name": "tenant-a/m", "url": "tenant-a/m"}),
    ("GET", "/models/tenant-a/m", None),
    ("DELETE", "/models/tenant-a/m", None),
    ("GET", "/v1/status", None),
    ("POST", "/v1/models/tenant-a/m/pin", None),
    ("POST", "/v1/models/tenant-a/m/unpin", None),
)


def test_every_management_route_needs_a_manage_key(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    root = tmp_path / "fleet"
    _write_fleet(root)
    server = start_server(root, api_keys=_keys_file(tmp_path))
    credentials: dict[str, dict[str, str]] = {
        "none": {},
        "unknown key": {"X-Api-Key": "not-a-key-anyone-was-given"},
        "bearer garbage": {"Authorization": "Bearer x"},
        "bad signature": {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIAUNKNOWN/20250101/"
                                           "us-east-1/sagemaker/aws4_request, SignedHeaders=host, "
                                           "Signature=00"},
    }  # fmt: skip
    with httpx.Client(base_url=server.url) as client:
        for method, path, body in MANAGEMENT_ROUTES:
            for label, headers in credentials.items():
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, label, response.text)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
            invoke_only = client.request(
                method, path, json=body, headers={"X-Api-Key": TENANT_A_KEY}
            )
            assert invoke_only.status_code == 403, (method, path, invoke_only.text)
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-Api-Key": TENANT_A_KEY}).status_code == 403
        # The operator's key opens them all (in an order that leaves each one meaningful).
        ops = {"X-Api-Key": OPS_KEY}
        for method, path, body in MANAGEMENT_ROUTES:
            if path == "/models" and method == "POST":
                client.delete("/models/tenant-a/m", headers=ops)
            if path.startswith("/models/tenant-a") or path.endswith(("/unload", "/pin")):
                client.post("/v2/repository/models/tenant-a/m/load", headers=ops)
            response = client.request(method, path, json=body, headers=ops)
            assert response.status_code == 200, (method, path, response.text)
        assert client.get("/metrics", headers=ops).status_code == 200
        # Open routes stay open.
        for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/v2", "/openapi.json"):
            assert client.get(path).status_code == 200, path


def test_without_keys_a_web_page_cannot_reach_the_server(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    root = tmp_path / "fleet"
    _write_fleet(root)
    server = start_server(root, allowed_hosts=("models.internal",))
    port = server.url.rsplit(":", 1)[1]
    load = {"model_name": "tenant-a/m", "url": "tenant-a/m"}
    with httpx.Client(base_url=server.url) as client:
        # DNS rebinding: a page's own name resolved to 127.0.0.1, sent in Host.
        rebound = client.get("/v2/models/tenant-a/m", headers={"Host": "attacker.example"})
        assert rebound.status_code == 403
        assert "--allowed-hosts" in rebound.json()["error"]
        # A cross-site form post, text/plain, with no preflight: it must not load a model.
        form = client.post(
            "/models", content=orjson.dumps(load),
            headers={"Content-Type": "text/plain", "Origin": "https://attacker.example"},
        )  # fmt: skip
        assert form.status_code == 403
        plain = client.post("/models", content=orjson.dumps(load),
                            headers={"Content-Type": "text/plain"})  # fmt: skip
        assert plain.status_code == 403
        assert "JSON body" in plain.json()["error"]
        unload = client.post(
            "/v2/repository/models/tenant-a/m/unload",
            content=b"x=1", headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert unload.status_code == 403
        fetch = client.delete("/models/tenant-a/m", headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch.status_code == 403
        resident = client.get("/models", headers={"Host": f"localhost:{port}"}).json()
        assert resident["models"] == []  # nothing above loaded or unloaded a model
        # This machine's own clients, a same-origin page and an allowed name pass.
        assert client.post("/models", json=load).status_code == 200
        same = client.post("/v2/repository/models/tenant-a/m/load",
                           headers={"Origin": f"http://localhost:{port}"})  # fmt: skip
        assert same.status_code == 200
        named = client.get("/v2/models/tenant-a/m", headers={"Host": f"models.internal:{port}"})
        assert named.status_code == 200
        ipv6 = client.get("/v2/health/ready", headers={"Host": f"[::1]:{port}"})
        assert ipv6.status_code == 200


def test_metrics_need_a_key_with_keys_on_unless_the_operator_opens_them(
    tmp_path: Path, start_server: Callable[..., ThreadServer]
) -> None:
    root = tmp_path / "fleet"
    _write_fleet(root)
    # With keys on and nothing said, /metrics (every tenant's model ids) is keyed: above.
    opened = start_server(root, api_keys=_keys_file(tmp_path), open_metrics=True)
    with httpx.Client(base_url=opened.url) as client:
        answer = client.get("/metrics")
        assert answer.status_code == 200
        assert "tenantserve_" in answer.text
        assert client.post("/v2/repository/index", json={}).status_code == 401  # only metrics


# -- 42: what errors never say ----------------------------------------------------------------


@pytest.mark.s3
def test_error_bodies_never_echo_paths_buckets_or_secrets(
    tmp_path: Path,
    start_server: Callable[..., ThreadServer],
    s3_env: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret_dir = tmp_path / "private-store-dir-1f2e"
    root = secret_dir / "store"
    cache = tmp_path / "private-cache-dir-9a8b"
    write_model(root / "acme" / "good", weight_floats=64, seed=1)
    write_model(root / "acme" / "huge", weight_floats=2 << 20, seed=2)  # 8 MiB of weights
    (root / "acme" / "corrupt").mkdir()
    (root / "acme" / "corrupt" / "model.onnx").write_bytes(b"\x08\x07 not protobuf")
    (root / "acme" / "missing-file").mkdir()
    (root / "acme" / "missing-file" / "model.json").write_text('{"model_file": "gone.onnx"}')
    (root / "acme" / "bad-json").mkdir()
    (root / "acme" / "bad-json" / "model.json").write_text("{not json")
    write_model(root / "acme" / "bad-sha", weight_floats=64, seed=3)
    (root / "acme" / "bad-sha" / "model.json").write_text(json.dumps({"sha256": "0" * 64}))
    (root / "acme" / "linked-out").mkdir()
    (root / "acme" / "linked-out" / "model.onnx").symlink_to("/etc/hostname")
    (root / "acme" / "escape.tar.gz").write_bytes(_tar_gz([_member("../../x")]))
    (root / "acme" / "broken.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated gzip")
    local = start_server(root, cache_dir=cache, memory_budget=4 << 20, max_body=64 * 1024)

    bucket = s3_env.create_bucket("tenant-secret-bucket")
    s3_env.upload_tree(root / "acme" / "good", bucket, "models/acme/good")
    no_bucket = start_server(
        "s3://no-such-bucket-7c1d/models", probe="/v2/health/live", store_retry_deadline_s=1.0
    )
    wrong_secret = "wrong-" + s3_env.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    denied = start_server(
        f"s3://{bucket}/models", probe="/v2/health/live", store_retry_deadline_s=1.0
    )

    forbidden = [
        str(tmp_path), str(secret_dir), str(cache), "/tmp/", "/etc/", "/dev/shm",
        bucket, "no-such-bucket-7c1d", s3_env.access_key, s3_env.secret_key, wrong_secret,
        s3_env.endpoint_url, "Traceback", "File \"",
    ]  # fmt: skip
    bodies: list[tuple[str, int, str]] = []

    def collect(label: str, response: httpx.Response) -> None:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        bodies.append((label, response.status_code, headers + "\n" + response.text))

    with httpx.Client(base_url=local.url) as client:
        for model_id in ("acme/corrupt", "acme/missing-file", "acme/bad-json", "acme/bad-sha",
                         "acme/linked-out", "acme/escape.tar.gz", "acme/broken.tar.gz",
                         "acme/huge", "acme/absent", "nobody/absent"):  # fmt: skip
            collect(model_id, infer(client, model_id))
            collect(f"sagemaker {model_id}", client.post(
                "/invocations", content=CSV_BODY,
                headers={"X-Amzn-SageMaker-Target-Model": model_id, "Content-Type": "text/csv"},
            ))  # fmt: skip
        collect("metadata", client.get("/v2/models/acme/corrupt"))
        collect("load", client.post("/v2/repository/models/acme/bad-sha/load"))
        collect("sm load", client.post("/models", json={"model_name": "acme/huge",
                                                        "url": "acme/huge"}))  # fmt: skip
        collect("bad input", client.post("/v2/models/acme/good/infer", content=b'{"inputs": 1}'))
        collect("too big", client.post("/v2/models/acme/good/infer", content=b"x" * (65 * 1024)))
        collect("bad id", client.post("/v2/models/acme/..%2f..%2fetc/infer", content=INFER_BODY))
    for server in (denied, no_bucket):
        with httpx.Client(base_url=server.url) as client:
            collect(f"{server.url} oip", infer(client, "acme/good"))
            collect(f"{server.url} index", client.post("/v2/repository/index"))
    statuses = {label: status for label, status, _ in bodies}
    assert statuses["acme/huge"] == 507
    assert statuses["acme/absent"] == 404
    assert statuses[f"{denied.url} oip"] >= 500
    assert statuses[f"{no_bucket.url} oip"] >= 400
    # Every call but the listings failed (a missing bucket lists as empty: 200, []).
    assert [label for label, s in statuses.items() if s < 400] == [f"{no_bucket.url} index"]
    leaks = [(label, word) for label, _, text in bodies for word in forbidden if word in text]
    assert not leaks, leaks
    assert not os.path.exists(tmp_path / "x")
