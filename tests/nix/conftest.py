"""Helpers for the Nix/systemd packaging checks (tests/nix/).

Each check needs an outside tool (nix-instantiate, systemd-analyze). Without it the
test skips with the reason; with SECRETIVEX_REQUIRE_ALL=1 it fails instead, so CI on
a machine that should have everything cannot go green by skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nixtools import REAL_LIB, NixEvalError, require_tool


@pytest.fixture(scope="session")
def nix_instantiate() -> str:
    return require_tool("nix-instantiate", "Debian: apt-get install nix-bin")


@pytest.fixture(scope="session")
def nix_eval(nix_instantiate: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """Evaluate a .nix file with --argstr arguments; return the JSON result."""
    # keep Nix's own state out of the way of whatever else runs on this machine
    state = tmp_path_factory.mktemp("nix-state")

    def run(file: Path, **argstr: str) -> Any:
        cmd = [nix_instantiate, "--eval", "--strict", "--json", str(file)]
        if REAL_LIB and file.name == "eval.nix":
            cmd += ["--argstr", "libPath", REAL_LIB]
        for key, value in argstr.items():
            cmd += ["--argstr", key, value]
        env = {**os.environ, "NIX_STATE_DIR": str(state), "NIX_PATH": ""}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        if proc.returncode != 0:
            raise NixEvalError(proc.stderr.strip())
        return json.loads(proc.stdout)

    return run


@pytest.fixture(scope="session")
def secretivex_bin() -> Path:
    """The secretivex console script of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("secretivex")
    if beside.exists():
        return beside
    found = shutil.which("secretivex")
    if found:
        return Path(found)
    pytest.fail("the secretivex console script is not installed (pip install -e .)")


@pytest.fixture(scope="session")
def fake_package(tmp_path_factory: pytest.TempPathFactory, secretivex_bin: Path) -> Path:
    """A directory shaped like the Nix package ($out/bin/secretivex) around the real CLI."""
    out = tmp_path_factory.mktemp("secretivex-pkg")
    (out / "bin").mkdir()
    (out / "bin" / "secretivex").symlink_to(secretivex_bin)
    return out
