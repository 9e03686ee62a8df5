"""Startup errors are one line on stderr and exit 1, never an ExceptionGroup traceback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import SECRETIVEX, running_agent
from sec_d_helpers import stderr_lines


def _agent(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True, mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env.pop("SECRETIVEX_CONFIG", None)
    return subprocess.run(
        [SECRETIVEX, "agent", *args], capture_output=True, text=True, env=env, timeout=60
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exactly one error line; anything else on stderr is the agent's INFO progress log."""
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in lines if line.startswith("secretivex:")]
    assert len(errors) == 1, proc.stderr
    assert all(" INFO " in line for line in lines if line not in errors), proc.stderr
    assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr
    return errors[0]


def test_second_agent_on_a_live_socket_prints_one_line(tmp_path: Path) -> None:
    with running_agent(tmp_path) as first:
        line = _one_line(_agent(tmp_path, "--socket", str(first.socket)))
        assert "already listening" in line and str(first.socket) in line
        # The first agent is untouched.
        assert first.ssh_add("-l", check=False).returncode == 1


def test_unusable_socket_path_prints_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the socket's directory should be")
    line = _one_line(_agent(tmp_path, "--socket", str(blocker / "agent.sock")))
    assert str(blocker) in line


def test_failing_second_listener_leaves_no_socket_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(f"listeners:\n  - socket: {blocker / 'ci.sock'}\n")
    main = run_dir / "agent.sock"
    line = _one_line(_agent(tmp_path, "--config", str(config), "--socket", str(main)))
    assert str(blocker) in line
    assert not main.exists()
