"""SIGTERM drains: a request in flight finishes, and one that would not finish is cut off
by the shutdown deadline (agent/server.py SHUTDOWN_GRACE_S), never waited on forever."""

from __future__ import annotations

import signal
import stat
import threading
import time
from pathlib import Path

import pytest
from harness import keygen, require_tool, running_agent, wait_until

from secretivex.agent.server import SHUTDOWN_GRACE_S
from secretivex.client import AgentError, SyncAgentClient

pytestmark = pytest.mark.openssh


def _agent_with_hook(tmp_path: Path, hook_body: str) -> tuple[Path, Path]:
    key = keygen(tmp_path, "slow", "ed25519")
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\necho started > {tmp_path}/hook-started\n{hook_body}\n")
    hook.chmod(hook.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n    timeout_ms: 120000\n"
    )
    return config, tmp_path / "hook-started"


def _sign_in_background(socket: Path) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def sign() -> None:
        try:
            with SyncAgentClient.connect(str(socket), response_timeout=120) as client:
                blob = client.list_identities()[0].blob
                result.append(client.sign(blob, b"in flight"))
        except AgentError as exc:
            result.append(exc)

    thread = threading.Thread(target=sign, daemon=True)
    thread.start()
    return thread, result


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    require_tool("ssh-keygen")
    config, started = _agent_with_hook(tmp_path, "sleep 1; exit 0")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        thread, result = _sign_in_background(agent.socket)
        assert wait_until(started.exists)
        agent.signal(signal.SIGTERM)
        thread.join(30)
        assert agent.proc.wait(30) == 0
        assert len(result) == 1 and isinstance(result[0], bytes), result


def test_sigterm_cuts_off_what_would_not_finish_at_the_deadline(tmp_path: Path) -> None:
    require_tool("ssh-keygen")
    config, started = _agent_with_hook(tmp_path, "sleep 600")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        thread, result = _sign_in_background(agent.socket)
        assert wait_until(started.exists)
        stopped_at = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(SHUTDOWN_GRACE_S + 20) == 0
        took = time.monotonic() - stopped_at
        thread.join(30)
        # Not before the grace period (the request had its chance), and not forever.
        assert took >= SHUTDOWN_GRACE_S * 0.9, took
        assert len(result) == 1 and isinstance(result[0], AgentError), result
