"""`agent --kill` signals only an agent it can prove is the one meant (AUDIT-REPORT F5),
and a config file another uid owns is named in a warning (F6), with real processes of
other uids (setpriv, as root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import SECRETIVEX, require_tool, run, running_agent
from sec_c_helpers import NOBODY, shared_dir


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid (setpriv)")
    require_tool("setpriv")


def _wait_for_argv(pid: int, needle: bytes) -> None:
    deadline = time.monotonic() + 10
    while needle not in Path(f"/proc/{pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the process never ran"
        time.sleep(0.02)


def _kill_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    env.update(extra)
    return env


def test_kill_by_pid_alone_refuses_another_uids_process_posing_as_an_agent() -> None:
    """argv is anyone's to choose: uid 65534 runs a program named `secretivex` with
    argument `agent` (argv exactly as the console script's). Named only by
    SSH_AGENT_PID (no socket proves it), root's --kill refuses it: not the caller's uid."""
    _need_root()
    with shared_dir() as d:
        fake = d / "bin" / "secretivex"
        fake.parent.mkdir(mode=0o755)
        fake.write_text("import time\ntime.sleep(300)\n")
        fake.chmod(0o644)
        python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
        victim = subprocess.Popen(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
             python, str(fake), "agent", "--socket", str(d / "a.sock")],
            start_new_session=True,
        )  # fmt: skip
        try:
            _wait_for_argv(victim.pid, b"agent")
            killed = run(
                [SECRETIVEX, "agent", "--kill"],
                env=_kill_env(SSH_AGENT_PID=str(victim.pid)),
                check=False,
            )
            time.sleep(0.3)
            assert victim.poll() is None, f"--kill signalled uid {NOBODY}'s process"
            assert killed.returncode == 1 and killed.stdout == ""
            assert f"belongs to uid {NOBODY}, not to you (uid 0)" in killed.stderr
            assert len(killed.stderr.strip().splitlines()) == 1, killed.stderr
        finally:
            victim.kill()
            victim.wait()


def test_kill_by_socket_refuses_a_listener_that_is_not_an_agent(tmp_path: Path) -> None:
    """What listens on --socket is identified by SO_PEERCRED; a process there that is
    not `secretivex agent` (here a plain Python listener, as a service manager's socket
    would be) is not signalled."""
    sock = tmp_path / "other.sock"
    listener = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
         "s.listen(); print('up', flush=True); time.sleep(300)", str(sock)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline() == b"up\n"
        killed = run([SECRETIVEX, "agent", "--kill", "--socket", str(sock)], check=False)
        time.sleep(0.3)
        assert listener.poll() is None, "--kill signalled a listener that is not an agent"
        assert killed.returncode == 1
        assert f"listens on {sock} but is not a secretivex agent" in killed.stderr
        assert sock.exists(), "the socket of a live listener was removed"
    finally:
        listener.kill()
        listener.wait()


def test_kill_by_socket_stops_the_agent_listening_there(tmp_path: Path) -> None:
    with running_agent(tmp_path) as agent:
        killed = run(
            [SECRETIVEX, "agent", "--kill", "--socket", str(agent.socket)], env=_kill_env()
        )
        assert killed.stdout.endswith(f"echo Agent pid {agent.proc.pid} killed;\n")
        agent.proc.wait(15)
        assert not agent.socket.exists()


def test_config_file_of_another_uid_is_used_with_a_warning(tmp_path: Path) -> None:
    """Not refused (a container's bind mount of a host file has a host uid), but the
    agent's log names the file and its owner."""
    _need_root()
    config = tmp_path / "c.yaml"
    config.write_text("agent:\n  max_connections: 64\n")
    os.chown(config, NOBODY, NOBODY)
    with running_agent(tmp_path, "--config", str(config)) as agent:
        assert agent.ssh_add("-l", check=False).returncode == 1  # serving: no keys
        log = agent.log()
    assert f"{config}: file is owned by uid {NOBODY}" in log, log
    checked = run([SECRETIVEX, "config", "validate", "--config", str(config)], check=False)
    assert checked.returncode == 0 and f"owned by uid {NOBODY}" in checked.stderr
