"""Under systemd, stderr is the journal stream: the agent's lines carry their syslog
priority (``<4>`` ...), so ``journalctl -p warning -u secretivex`` shows its warnings
and errors, and no time of their own (the journal records it). Here the journal is
stood in for by a pipe whose device and inode ``$JOURNAL_STREAM`` names, as systemd
sets it; ``tests/systemd`` checks ``journalctl -p err`` under a real systemd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from harness import SECRETIVEX, keygen, wait_for_socket

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def _agent(tmp: Path, *args: str, journal: bool) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``secretivex agent ARGS`` with stderr on a pipe; returns it and the read end."""
    read_fd, write_fd = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SECRETIVEX_", "JOURNAL"))}
    env.update(HOME=str(tmp), XDG_CONFIG_HOME=str(tmp / "config"), XDG_RUNTIME_DIR=str(tmp))
    if journal:
        st = os.fstat(write_fd)
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.Popen(
        [SECRETIVEX, "agent", *args], env=env, stderr=write_fd, stdout=subprocess.DEVNULL
    )
    os.close(write_fd)
    return proc, read_fd


def _lines(proc: subprocess.Popen[bytes], read_fd: int) -> list[str]:
    assert proc.wait(timeout=60) in (0, 2), proc.returncode
    with os.fdopen(read_fd, "rb") as stream:
        return stream.read().decode().splitlines()


def _serve_with_a_warning(tmp: Path, *, journal: bool) -> list[str]:
    key = keygen(tmp, "id_ed25519")
    key.chmod(0o640)  # served, with a WARNING: others could read it
    sock = tmp / "agent.sock"
    proc, read_fd = _agent(tmp, "--socket", str(sock), "--key", str(key), journal=journal)
    try:
        wait_for_socket(sock, proc=proc)
    finally:
        proc.send_signal(signal.SIGTERM)
    return _lines(proc, read_fd)


def test_agent_lines_carry_their_priority_on_the_journal_stream(tmp_path: Path) -> None:
    lines = _serve_with_a_warning(tmp_path, journal=True)
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    warnings = [line for line in lines if line.startswith("<4>WARNING ")]
    assert any("id_ed25519" in line for line in warnings), lines
    assert any(line.startswith("<6>INFO ") and "listening on" in line for line in lines), lines
    assert not any(STAMP.match(line[3:]) for line in lines), lines  # the journal has the time


def test_a_config_error_at_start_is_at_error_priority(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  max_connections: 0\n")
    proc, read_fd = _agent(
        tmp_path, "--socket", str(tmp_path / "a.sock"), "--config", str(bad), journal=True
    )
    lines = _lines(proc, read_fd)
    assert proc.returncode == 2
    assert lines and all(line.startswith("<3>secretivex: ") for line in lines), lines
    assert any("agent.max_connections" in line for line in lines), lines


def test_elsewhere_lines_are_plain_with_their_time(tmp_path: Path) -> None:
    """A terminal, a log file or a pipe that is not the journal gets no prefixes."""
    lines = _serve_with_a_warning(tmp_path, journal=False)
    assert lines and all(STAMP.match(line) for line in lines), lines
    assert any(" WARNING " in line and "id_ed25519" in line for line in lines), lines
