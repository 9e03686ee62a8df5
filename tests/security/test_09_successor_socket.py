"""Item 9: an exiting agent removes its socket only if it is still the file it bound.

Agent A drains an in-flight request (a slow confirm hook) after SIGTERM; its listener
is closed at drain start, so agent B can take the path over. When A finally exits it
must leave B's socket alone."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import keygen, start_agent
from sec_d_helpers import config_file, pid_alive, wait_until


def _refuses(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return True
    return False


def test_exiting_agent_keeps_its_successors_socket(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    key = keygen(keys, "id_ed25519")
    started = tmp_path / "hook-started"
    hook = tmp_path / "slow-confirm.sh"
    hook.write_text(f"#!/bin/sh\ntouch {started}\nsleep 30\n")
    hook.chmod(0o755)
    cfg = config_file(
        tmp_path,
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n    timeout_ms: 60000\n",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "agent.sock"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    agent_a = start_agent(tmp_path / "a", "--config", str(cfg), socket_path=sock)
    agent_b = None
    data = tmp_path / "data"
    data.write_text("payload")
    signer = subprocess.Popen(
        ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", f"{key}.pub", str(data)],
        env=agent_a.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_until(started.exists, timeout=30), agent_a.log()
        a_inode = sock.lstat().st_ino
        agent_a.signal(signal.SIGTERM)
        # A stops accepting at drain start but keeps running for the in-flight sign
        # (up to its 5 s drain grace). Freeze it there, so that B's start-up time on a
        # busy machine cannot decide the outcome.
        assert wait_until(lambda: _refuses(sock), timeout=10)
        agent_a.signal(signal.SIGSTOP)
        assert pid_alive(agent_a.proc.pid) and agent_a.proc.poll() is None, (
            "agent A exited before it could be frozen: the test proves nothing on this run"
        )
        try:
            agent_b = start_agent(tmp_path / "b", socket_path=sock)
            assert sock.lstat().st_ino != a_inode  # B replaced A's dead socket file
        finally:
            agent_a.signal(signal.SIGCONT)
        agent_a.proc.wait(30)
        time.sleep(0.2)
        assert sock.exists(), "the old agent removed its successor's socket"
        assert agent_b.ssh_add("-l", check=False).returncode == 1  # B answers: no keys
    finally:
        signer.kill()
        signer.wait()
        agent_a.stop()
        if agent_b is not None:
            assert agent_b.stop() == 0
    assert not sock.exists()  # B, the owner of the file, cleaned up after itself
