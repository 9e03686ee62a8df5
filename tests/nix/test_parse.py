"""Every .nix file in the repository parses (nix-instantiate --parse)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from nixtools import REPO

pytestmark = pytest.mark.nix

SKIP_DIRS = {".git", ".venv", "node_modules", "result", ".mypy_cache", ".ruff_cache", "build"}

# the files this repository must have; the glob below finds any others too
EXPECTED = {
    "flake.nix",
    "nixos-module/default.nix",
    "nixos-module/package.nix",
    "nixos-module/validate-config.nix",
    "nixos-module/test.nix",
    "nixos-module/testing/lib.nix",
    "nixos-module/testing/pkgs.nix",
    "nixos-module/testing/nixos-stub.nix",
    "nixos-module/testing/eval.nix",
    "nixos-module/testing/flake-eval.nix",
    "nixos-module/testing/nixpkgs/default.nix",
}


def nix_files() -> list[str]:
    found = []
    for path in REPO.rglob("*.nix"):
        rel = path.relative_to(REPO)
        if not SKIP_DIRS.intersection(rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


def test_expected_nix_files_exist() -> None:
    assert set(nix_files()) >= EXPECTED, EXPECTED - set(nix_files())


@pytest.mark.parametrize("rel", nix_files())
def test_nix_file_parses(nix_instantiate: str, rel: str) -> None:
    proc = subprocess.run(
        [nix_instantiate, "--parse", str(REPO / rel)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_parse_has_teeth(nix_instantiate: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nix"
    bad.write_text("{ a = 1; b = ; }\n")
    proc = subprocess.run([nix_instantiate, "--parse", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "syntax error" in proc.stderr
