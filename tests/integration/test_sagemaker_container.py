"""The container's entry point run as SageMaker runs it, without the container: ``tenantserve
sagemaker serve`` as a child process, an /opt/ml-like folder given by TENANTSERVE_SAGEMAKER_ROOT,
models unpacked into it as SageMaker unpacks a model.tar.gz, then the calls SageMaker makes:
the multi-model container API (load with the url it unpacked into, invoke, list, describe,
unload) and, for a single model, ``/ping`` and ``/invocations`` without a target header.
The image around it is checked in test_dockerfile.py; neither is SageMaker itself."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fixtures.models import make_model
from fixtures.server import free_port, wait_ready

pytestmark = pytest.mark.slow

ROW = [[0.5] * 16]  # the synthetic model: input FP32 [-1, 16] → output [-1, 4]
# SageMaker names each model of a multi-model endpoint (a hash): not the TargetModel the caller
# gave, which reaches the container in X-Amzn-SageMaker-Target-Model for its logs.
NAME_A = "9f86d081884c7d659a2feaa0c55ad015"
NAME_B = "60303ae22b998861bce3b28f33eec1be"


@dataclass
class Container:
    url: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def run_container(tmp_path: Path) -> Iterator[Callable[..., Container]]:
    """Factory: ``run_container(root, SAGEMAKER_…=…)`` → the entry point, once ``/ping`` is 200."""
    started: list[Container] = []

    def run(root: Path, **env: str) -> Container:
        port = free_port()
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("TENANTSERVE_", "SAGEMAKER_"))
        }
        environ |= {
            "TENANTSERVE_SAGEMAKER_ROOT": str(root),
            "SAGEMAKER_BIND_TO_PORT": str(port),  # as in an inference pipeline: not 8080 here
            "TENANTSERVE_CACHE_DIR": str(tmp_path / "cache"),
            "TENANTSERVE_THREADS": "2",
            "TENANTSERVE_MEMORY_BUDGET": "256MiB",
            **env,
        }
        log = tmp_path / f"container-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tenantserve", "sagemaker", "serve"],
                env=environ, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        container = Container(f"http://127.0.0.1:{port}", root, proc, log)
        started.append(container)
        try:
            wait_ready(container.url, proc=proc, probe="/ping")
        except (RuntimeError, TimeoutError):
            raise AssertionError(log.read_text()[-3000:]) from None
        return container

    yield run
    for container in started:  # SageMaker stops a container with SIGTERM: a clean stop
        stopped = container.stop()
        assert stopped in (0, -signal.SIGTERM), container.log.read_text()[-3000:]


def _model_tar_gz(tmp_path: Path, *, folder: str = "", seed: int = 0) -> bytes:
    """A model.tar.gz as a user uploads it: the model's files, or a folder holding them."""
    source = make_model(tmp_path / f"source-{seed}", size_bytes=50_000, seed=seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.iterdir()):
            tar.add(path, arcname=f"{folder}{path.name}")
    return buffer.getvalue()


def _unpack(archive: bytes, dest: Path) -> None:
    """What SageMaker does with a model.tar.gz before it asks the container to load it."""
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def test_a_multi_model_endpoint_loads_invokes_lists_and_unloads_as_sagemaker_asks(
    run_container: Callable[..., Container], tmp_path: Path
) -> None:
    root = tmp_path / "ml"
    container = run_container(root, SAGEMAKER_MULTI_MODEL="true")
    models = root / "models"
    with httpx.Client(base_url=container.url, timeout=30) as sagemaker:
        assert sagemaker.get("/ping").status_code == 200
        assert sagemaker.get("/models").json() == {"models": [], "nextPageToken": None}

        _unpack(_model_tar_gz(tmp_path, seed=1), models / NAME_A / "model")
        _unpack(_model_tar_gz(tmp_path, folder="macros/", seed=2), models / NAME_B / "model")
        for name in (NAME_A, NAME_B):
            url = f"{models}/{name}/model"  # as SageMaker sends it
            loaded = sagemaker.post("/models", json={"model_name": name, "url": url})
            assert loaded.status_code == 200, loaded.text
            assert loaded.json()["modelName"] == name
        again = sagemaker.post(
            "/models", json={"model_name": NAME_A, "url": f"{models}/{NAME_A}/model"}
        )
        assert again.status_code == 409, again.text  # the contract's answer to a second load
        elsewhere = sagemaker.post(
            "/models", json={"model_name": NAME_A, "url": f"{models}/{NAME_B}/model"}
        )
        assert elsewhere.status_code == 400

        answers = []
        for name, target in ((NAME_A, "acme/macros.tar.gz"), (NAME_B, "globex/macros.tar.gz")):
            answer = sagemaker.post(
                f"/models/{name}/invoke",
                json=ROW,
                headers={"X-Amzn-SageMaker-Target-Model": target, "Accept": "application/json"},
            )
            assert answer.status_code == 200, answer.text
            (prediction,) = answer.json()["predictions"]
            answers.append(prediction)
        assert answers[0] != answers[1]  # two models, each its own

        listed = sagemaker.get("/models").json()
        assert sorted(m["modelName"] for m in listed["models"]) == sorted([NAME_A, NAME_B])
        assert sagemaker.get(f"/models/{NAME_A}").json()["modelName"] == NAME_A
        paged = sagemaker.get("/models", params={"limit": 1}).json()
        assert len(paged["models"]) == 1
        assert paged["nextPageToken"]

        assert sagemaker.delete(f"/models/{NAME_A}").status_code == 200
        listed = sagemaker.get("/models").json()
        assert [m["modelName"] for m in listed["models"]] == [NAME_B]
        assert sagemaker.delete(f"/models/{NAME_A}").status_code == 404
        assert sagemaker.get("/ping").status_code == 200


def test_a_single_model_endpoint_answers_invocations_without_a_target(
    run_container: Callable[..., Container], tmp_path: Path
) -> None:
    root = tmp_path / "ml"
    _unpack(_model_tar_gz(tmp_path), root / "model")  # SageMaker unpacks it before the start
    container = run_container(root)  # no SAGEMAKER_MULTI_MODEL: the folder says which
    with httpx.Client(base_url=container.url, timeout=30) as sagemaker:
        assert sagemaker.get("/ping").status_code == 200
        answer = sagemaker.post("/invocations", json=ROW)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 1
        csv = sagemaker.post(
            "/invocations", content=b"0.5," * 15 + b"0.5\n", headers={"Content-Type": "text/csv"}
        )
        assert csv.status_code == 200, csv.text
        listed = sagemaker.get("/models").json()["models"]
        assert [m["modelName"] for m in listed] == ["model"]  # pinned: loaded at the start


def test_the_entry_point_refuses_to_start_on_what_it_cannot_serve(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SAGEMAKER_")}
    environ |= {"TENANTSERVE_SAGEMAKER_ROOT": str(tmp_path), "SAGEMAKER_MULTIMODEL": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "tenantserve", "sagemaker", "serve"],
        env=environ, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: unknown variable SAGEMAKER_MULTIMODEL" in done.stderr
