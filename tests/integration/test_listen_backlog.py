"""A default install listens with the system's largest backlog (issue 16 item 1).

Proved on a real agent: the kernel's view of its listening socket (`ss -xl`: Send-Q of
a listening socket is its backlog) must equal net.core.somaxconn for every profile,
and a configured value must win.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import require_tool, running_agent

SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())


def kernel_backlog(sock: Path) -> int:
    out = subprocess.run(
        ["ss", "-xlH", "src", str(sock)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    # Netid State Recv-Q Send-Q Local ...: for a listener Send-Q is the backlog.
    assert out and str(sock) in out, out
    return int(out[3])


@pytest.mark.parametrize("profile", ["balanced", "low-memory"])
def test_every_profile_listens_with_somaxconn(tmp_path: Path, profile: str) -> None:
    require_tool("ss")
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent:\n  profile: {profile}\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        assert kernel_backlog(agent.socket) == SOMAXCONN


def test_a_configured_backlog_wins(tmp_path: Path) -> None:
    require_tool("ss")
    config = tmp_path / "agent.yaml"
    config.write_text("agent:\n  listen_backlog: 37\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        assert kernel_backlog(agent.socket) == 37
