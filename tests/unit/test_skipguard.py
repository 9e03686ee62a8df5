"""The skip guard (tests/skipguard.py): under SECRETIVEX_REQUIRE_ALL=1 a skip fails and
names what was missing.

Each case runs pytest in a child process, with the variable set explicitly (on or
off), on our real test modules with a tool hidden from PATH or a package made
unimportable, and on a throwaway file that skips every way pytest allows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


def _pytest(
    *args: str | Path, require_all: bool, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    full_env.pop("SECRETIVEX_REQUIRE_ALL", None)
    if require_all:
        full_env["SECRETIVEX_REQUIRE_ALL"] = "1"
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_module_skipif_for_a_hidden_tool_fails_and_names_it(tmp_path: Path) -> None:
    """test_keys_wire.py skips (module-level skipif) without ssh-agent: CI must fail."""
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    target = TESTS / "unit" / "test_keys_wire.py"
    env = {"PATH": str(empty_path)}

    relaxed = _pytest(target, require_all=False, env=env)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert " skipped" in relaxed.stdout and "failed" not in relaxed.stdout

    strict = _pytest(target, require_all=True, env=env)
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "SECRETIVEX_REQUIRE_ALL=1 forbids skipping" in strict.stdout
    assert "needs ssh-add and ssh-agent" in strict.stdout
    assert " passed" not in strict.stdout.splitlines()[-1]


def test_importorskip_of_a_missing_test_package_fails_and_names_it(tmp_path: Path) -> None:
    """test_metrics_prometheus.py importorskips prometheus_client at import time."""
    blocker = tmp_path / "block" / "prometheus_client"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError('prometheus_client hidden for a test', name=__name__)\n"
    )
    target = TESTS / "unit" / "test_metrics_prometheus.py"
    env = {"PYTHONPATH": str(blocker.parent)}

    relaxed = _pytest(target, require_all=False, env=env)
    assert relaxed.returncode in (0, 5), relaxed.stdout + relaxed.stderr  # 5: nothing ran
    assert "1 skipped" in relaxed.stdout

    strict = _pytest(target, require_all=True, env=env)
    assert strict.returncode != 0, strict.stdout + strict.stderr
    assert "forbids skipping" in strict.stdout
    assert "prometheus_client" in strict.stdout
    assert "import (module-level skip or importorskip)" in strict.stdout


THROWAWAY = """\
import pytest

@pytest.fixture
def needs_thing():
    pytest.skip("fixture: thing is missing")

def test_call_skip():
    pytest.skip("call: tool is missing")

@pytest.mark.skipif(True, reason="mark: tool is missing")
def test_mark_skip():
    pass

def test_fixture_skip(needs_thing):
    pass

def test_allowed_skip():
    pytest.skip("right even in CI: test of the allowlist")

@pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
def test_xfail():
    assert False

def test_runs():
    pass
"""

ALLOW_ONE = """\
import skipguard

skipguard.ALLOWED = (
    skipguard.AllowedSkip("*::test_allowed_skip", r"^right even in CI", "tested"),
)
"""


def test_every_kind_of_skip_fails_except_the_allowed_one(tmp_path: Path) -> None:
    (tmp_path / "test_throwaway.py").write_text(THROWAWAY)
    (tmp_path / "conftest.py").write_text(ALLOW_ONE)
    env = {"PYTHONPATH": str(TESTS)}

    relaxed = _pytest("-p", "skipguard", tmp_path, require_all=False, cwd=tmp_path, env=env)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "1 passed, 4 skipped, 1 xfailed" in relaxed.stdout

    strict = _pytest("-p", "skipguard", tmp_path, require_all=True, cwd=tmp_path, env=env)
    out = strict.stdout
    assert strict.returncode == 1, out + strict.stderr
    assert "FAILED test_throwaway.py::test_call_skip" in out
    assert "was skipped at call: call: tool is missing" in out
    assert "ERROR test_throwaway.py::test_mark_skip" in out
    assert "was skipped at setup: mark: tool is missing" in out
    assert "ERROR test_throwaway.py::test_fixture_skip" in out
    assert "was skipped at setup: fixture: thing is missing" in out
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in out
    assert "SKIPPED [1] test_throwaway.py" in out and "right even in CI" in out
