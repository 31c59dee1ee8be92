"""The package as users install it: a wheel built from this tree, in an empty venv outside the
repository, builds a fleet from the data it carries and serves it, status page included; and
serves as the container image's entry point (``tenantserve sagemaker serve``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from fixtures.models import make_model
from fixtures.server import free_port, wait_ready

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(the venv's bin folder, an environment that knows nothing of this checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    # The tree as git would ship it (tracked and untracked-but-not-ignored files), no caches.
    tree = work / "tree"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, check=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TENANTSERVE_DATASETS")}
    env.pop("VIRTUAL_ENV", None)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", work / "dist", tree,
         cwd=work, env=env)  # fmt: skip
    (wheel,) = (work / "dist").glob("tenantserve-*.whl")
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    # The same pinned versions `make test` installs; the fleet extra for `fleet build`.
    _run(bin_dir / "python", "-m", "pip", "install", "--quiet", "-c", REPO / "constraints.txt",
         f"tenantserve[fleet] @ {wheel.as_uri()}", cwd=work, env=env, timeout=900)  # fmt: skip
    return bin_dir, env


def test_the_installed_wheel_builds_a_fleet_from_its_own_data_and_serves_it(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    bin_dir, env = installed
    where = _run(bin_dir / "python", "-c", "import tenantserve; print(tenantserve.__file__)",
                 cwd=tmp_path, env=env)  # fmt: skip
    assert str(bin_dir.parent) in where, where  # the venv's copy, not this checkout's src/

    store = tmp_path / "store"
    out = _run(bin_dir / "tenantserve", "fleet", "build", "--dataset", "banking77",
               "--tenants", "2", "--store", store, cwd=tmp_path, env=env)  # fmt: skip
    models = sorted(p.parent.relative_to(store).as_posix() for p in store.glob("*/*/model.onnx"))
    assert len(models) == 2, out

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [bin_dir / "tenantserve", "serve", "--store", store, "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(url, proc=proc)
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1],
                            "data": ["I lost my card, please block it"]}]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/{models[0]}/infer", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"], answer.text
        page = httpx.get(f"{url}/ui/", timeout=10)
        assert page.status_code == 200
        assert "<html" in page.text.lower()
        script = httpx.get(f"{url}/ui/status.js", timeout=10)
        assert script.status_code == 200
        assert len(script.content) > 1000
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_the_installed_wheels_sagemaker_entry_point_loads_and_invokes(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """What the Dockerfile's ENTRYPOINT runs, from the wheel: a multi-model load and invoke."""
    bin_dir, env = installed
    root, port = tmp_path / "ml", free_port()
    name = "5d41402abc4b2a76b9719d911017c592"  # SageMaker's name for a model
    make_model(root / "models" / name / "model", size_bytes=50_000)  # as SageMaker unpacks it
    environ = {k: v for k, v in env.items() if not k.startswith(("TENANTSERVE_", "SAGEMAKER_"))}
    environ |= {
        "TENANTSERVE_SAGEMAKER_ROOT": str(root), "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MULTI_MODEL": "true", "TENANTSERVE_CACHE_DIR": str(tmp_path / "cache"),
    }  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "container.log").open("wb")
    proc = subprocess.Popen(
        [bin_dir / "tenantserve", "sagemaker", "serve"],
        cwd=tmp_path, env=environ, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(url, proc=proc, probe="/ping")
        body = {"model_name": name, "url": f"{root}/models/{name}/model"}
        loaded = httpx.post(f"{url}/models", json=body, timeout=60)
        assert loaded.status_code == 200, loaded.text
        answer = httpx.post(f"{url}/models/{name}/invoke", json=[[0.5] * 16], timeout=60)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
