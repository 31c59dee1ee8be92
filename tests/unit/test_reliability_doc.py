"""docs/reliability.md names a test for each case: every test it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


def _case_tables() -> str:
    """The doc up to its figures (whose tables hold numbers, not case numbers)."""
    return DOC.read_text().split("\n## Figures", 1)[0]


# `file.py::test_a`, followed by `::test_b` (same file) within one table cell.
_CELL_REFS = re.compile(r"`(?P<file>[\w/]+\.py)?(?:::(?P<test>\w+))?(?:\[[^\]]*\])?`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def _references() -> list[tuple[int, str, str | None]]:
    """(case number, file, test or None) for every test reference in the case tables."""
    refs = []
    for line in _case_tables().splitlines():
        case = re.match(r"\| (\d+) \|", line)
        if case is None:
            continue
        current: str | None = None
        for match in _CELL_REFS.finditer(line):
            if match["file"]:
                current = match["file"]
            if current is not None and (match["file"] or match["test"]):
                refs.append((int(case[1]), current, match["test"]))
    return refs


def test_every_case_is_listed_once() -> None:
    cases = [int(m[1]) for m in re.finditer(r"^\| (\d+) \|", _case_tables(), re.M)]
    assert cases == list(range(1, 46))


def test_every_test_the_doc_names_exists() -> None:
    refs = _references()
    assert len({case for case, _, _ in refs}) == 44  # all but 36 (not applicable)
    missing = []
    for case, file, test in refs:
        path = ROOT / file if file.startswith("tests/") else ROOT / "tests" / "integration" / file
        if not path.is_file():
            missing.append(f"{case}: {file}")
        elif test is not None and test not in _tests_in(path):
            missing.append(f"{case}: {file}::{test}")
    assert not missing, missing
