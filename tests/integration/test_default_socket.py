"""The agent and its clients agree on the default socket, whatever XDG_RUNTIME_DIR holds."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import SECRETIVEX, wait_for_socket


@pytest.mark.parametrize("runtime_dir", ["relative/run", None])
def test_client_finds_the_agent_on_the_default_socket(
    tmp_path: Path, runtime_dir: str | None
) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    for name in ("SSH_AUTH_SOCK", "SECRETIVEX_CONFIG", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    if runtime_dir is not None:
        # A relative XDG_RUNTIME_DIR is ignored by both (the XDG spec says so): they meet
        # at ~/.secretivex, not at two different paths relative to their own cwd.
        env["XDG_RUNTIME_DIR"] = runtime_dir
    expected = home / ".secretivex" / "agent.sock"
    (tmp_path / "agent-cwd").mkdir()
    (tmp_path / "client-cwd").mkdir()
    agent = subprocess.Popen(
        [SECRETIVEX, "agent"],
        cwd=tmp_path / "agent-cwd",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(expected, proc=agent)
        health = subprocess.run(
            [SECRETIVEX, "client", "health"],
            cwd=tmp_path / "client-cwd",
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert health.returncode == 0, health.stderr
        assert not (tmp_path / "agent-cwd" / "relative").exists()
    finally:
        agent.terminate()
        agent.wait(15)
