"""docs/security.md's threat model names the test behind every row: those tests exist.

A renamed or deleted attack test would otherwise leave a row that claims a defence
nothing checks any more.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"


def _threat_rows() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Threat model", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]


def _named_tests(cell: str) -> list[tuple[str, str | None]]:
    """(file, test or None) pairs from a 'shown by' cell; `::name` reuses the last file."""
    found: list[tuple[str, str | None]] = []
    current = ""
    for ref in re.findall(r"`([^`]+)`", cell):
        path, _, name = ref.partition("::")
        if path:
            current = path if "/" in path else f"tests/security/{path}"
        name = name.split("[", 1)[0] or None
        found.append((current, name))
    return found


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_threat_row_names_tests_that_exist() -> None:
    rows = _threat_rows()
    assert len(rows) >= 15, "the threat-model table went missing"
    checked = 0
    for row in rows:
        shown_by = row.rstrip(" |").rsplit("|", 1)[1]
        for file, name in _named_tests(shown_by):
            path = REPO / file
            assert path.exists(), f"{DOC.name}: {file} (row: {row[:60]}...) does not exist"
            if name is not None:
                assert name in _functions(path), f"{DOC.name}: {file}::{name} does not exist"
            checked += 1
    assert checked >= 30
