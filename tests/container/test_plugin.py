"""The pytest plugin as a downstream suite meets it: each case runs pytest in a fresh
process on a throwaway project (the plugin loads through its ``pytest11`` entry point).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from containerlib import SOFTHSM_IMAGE

REPO = Path(__file__).resolve().parents[2]

ONE_LINE_TEST = """\
import os, subprocess

def test_agent(secretivex_agent):
    env = {**os.environ, **secretivex_agent.env()}
    subprocess.run(["ssh-add", "-l"], env=env, check=True)
"""


def _pytest(
    project: Path, extra_env: dict[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "SECRETIVEX_REQUIRE_ALL"))
    }
    env.update(
        {
            "TESTCONTAINERS_RYUK_DISABLED": "true",
            "SECRETIVEX_TESTING_IMAGE": SOFTHSM_IMAGE,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.update(extra_env or {})
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            *args,
            str(project),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _project(tmp_path: Path, test_source: str) -> Path:
    project = tmp_path / "downstream"
    project.mkdir()
    (project / "test_downstream.py").write_text(test_source)
    return project


def test_importing_the_plugin_is_cheap() -> None:
    code = (
        "import sys, secretivex.testing, secretivex.testing.plugin\n"
        "heavy = sorted(m for m in sys.modules if m.startswith("
        "('testcontainers', 'docker', 'secretivex.client', 'cryptography')))\n"
        "assert not heavy, heavy\n"
        "assert 'SecretivexContainer' in dir(secretivex.testing)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_plugin_is_registered_by_the_entry_point(tmp_path: Path) -> None:
    project = _project(tmp_path, "def test_nothing():\n    pass\n")
    result = _pytest(project, None, "--fixtures")
    assert result.returncode == 0, result.stdout + result.stderr
    for fixture in ("secretivex_agent ", "secretivex_agent_factory", "secretivex_agent_options"):
        assert fixture in result.stdout


def test_skips_without_testcontainers(tmp_path: Path) -> None:
    blocker = tmp_path / "no-testcontainers" / "testcontainers"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('testcontainers blocked for a test')\n")
    project = _project(tmp_path, ONE_LINE_TEST)
    result = _pytest(project, {"PYTHONPATH": str(blocker.parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "secretivex_agent needs Docker: testcontainers is not installed" in result.stdout
    assert "pip install 'secretivex[testing]'" in result.stdout


def test_skips_without_a_docker_engine(tmp_path: Path) -> None:
    project = _project(tmp_path, ONE_LINE_TEST)
    result = _pytest(project, {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "secretivex_agent needs Docker: no Docker engine reachable" in result.stdout


def _docs_example() -> str:
    text = (REPO / "docs" / "testing.md").read_text()
    match = re.search(
        r"<!-- downstream-example: begin -->\n```python\n(.*?)```\n"
        r"<!-- downstream-example: end -->",
        text,
        re.S,
    )
    assert match, "docs/testing.md lost its downstream example markers"
    return match.group(1)


def _docs_one_line_example() -> str:
    text = (REPO / "docs" / "testing.md").read_text()
    marker = "<!-- one-line-example: tests/container/test_plugin.py runs it"
    assert marker in text, "docs/testing.md lost its one-line example marker"
    return text.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.container
@pytest.mark.parametrize(
    ("example", "outcome"),
    [(_docs_one_line_example, "1 passed"), (_docs_example, "2 passed")],
    ids=["one-line", "sshd-and-git"],
)
def test_docs_examples_pass_in_a_downstream_project(
    docker_ready: None, tmp_path: Path, example: Callable[[], str], outcome: str
) -> None:
    """docs/testing.md's "In one line" and its sshd + git example, pasted into a
    downstream project as they are."""
    project = _project(tmp_path, example())
    result = _pytest(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome in result.stdout
