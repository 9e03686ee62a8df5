"""`secretivex agent --daemon` / `--kill`: ssh-agent's eval habits, in real shells.

Every test runs the real CLI in a real bash or csh, with real ssh-add, and checks what a
user would see: the command substitution returns, the agent serves, --kill leaves no
process and no socket behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from harness import SECRETIVEX, keygen, require_tool

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(SECRETIVEX).parent)
#: Generous: the point is "returns", not "returns fast" (2 noisy cores).
RETURNS_WITHIN_S = 60


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SSH_", "SECRETIVEX_", "XDG_", "NOTIFY_", "LISTEN_"))
    }
    run_dir = tmp / "xdg"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(run_dir),
        XDG_CONFIG_HOME=str(home / ".config"),
        PATH=f"{BIN}:{os.environ['PATH']}",
        SHELL="/bin/bash",
    )
    env.update(extra)
    return env


def _shell(argv: list[str], script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script``; a daemon holding the shell's stdout open would trip the timeout."""
    return subprocess.run(
        [*argv, script],
        env=env,
        capture_output=True,
        text=True,
        timeout=RETURNS_WITHIN_S,
    )


def _gone(pid: int) -> bool:
    """Exited: no process, or a zombie whose parent (init here) has not reaped it yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def _pid_from(output: str) -> int:
    match = re.search(r"Agent pid (\d+)", output)
    assert match, output
    return int(match.group(1))


def test_eval_daemon_then_kill_in_bash(tmp_path: Path) -> None:
    require_tool("bash", "ssh-add")
    sock = tmp_path / "s" / "agent.sock"
    script = f"""
        set -e
        eval "$(secretivex agent --daemon -a {sock})"
        echo "sock=$SSH_AUTH_SOCK pid=$SSH_AGENT_PID"
        test -S "$SSH_AUTH_SOCK"
        ssh-add -l || test $? -eq 1     # 1 = no identities: the agent answered
        secretivex agent --kill
    """
    result = _shell(["bash", "-c"], script, _env(tmp_path))
    assert result.returncode == 0, result.stderr
    pid = _pid_from(result.stdout)
    assert f"sock={sock} pid={pid}" in result.stdout
    assert "The agent has no identities." in result.stdout
    assert result.stdout.endswith(
        f"unset SSH_AUTH_SOCK;\nunset SSH_AGENT_PID;\necho Agent pid {pid} killed;\n"
    )
    assert _gone(pid), "--kill returned before the agent exited"
    assert not sock.exists(), "--kill left the socket behind"
    assert "Traceback" not in result.stderr


def test_daemon_outlives_the_shell_that_started_it(tmp_path: Path) -> None:
    """The agent keeps serving after the eval'ing shell exits, adds keys with -t's default
    lifetime, and a later --kill by SSH_AGENT_PID stops it."""
    require_tool("bash", "ssh-add", "ssh-keygen")
    key = keygen(tmp_path, "laptop")
    sock = tmp_path / "agent.sock"
    log = tmp_path / "agent.log"
    env = _env(tmp_path)
    started = _shell(
        ["bash", "-c"], f"secretivex agent --daemon -s -t 2 -a {sock} --log-file {log}", env
    )
    assert started.returncode == 0, started.stderr
    pid = _pid_from(started.stdout)
    assert started.stdout == (
        f"SSH_AUTH_SOCK={sock}; export SSH_AUTH_SOCK;\n"
        f"SSH_AGENT_PID={pid}; export SSH_AGENT_PID;\n"
        f"echo Agent pid {pid};\n"
    )
    env.update(SSH_AUTH_SOCK=str(sock), SSH_AGENT_PID=str(pid))
    try:
        added = subprocess.run(["ssh-add", str(key)], env=env, capture_output=True, text=True)
        assert added.returncode == 0, added.stderr
        listed = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True)
        assert "laptop" in listed.stdout
        # -t 2: the key expires by itself, as after `ssh-agent -t 2`.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True)
            if "laptop" not in listed.stdout:
                break
            time.sleep(0.2)
        assert "laptop" not in listed.stdout, "default lifetime did not expire the key"
    finally:
        killed = _shell(["bash", "-c"], 'eval "$(secretivex agent --kill)"; env', env)
    assert killed.returncode == 0, killed.stderr
    assert "SSH_AGENT_PID=" not in killed.stdout and "SSH_AUTH_SOCK=" not in killed.stdout
    # --log-file kept the daemon's log: start, the ssh-add'ed key with its lifetime, stop.
    logged = log.read_text()
    assert f"secretivex listening on {sock}" in logged
    assert "lifetime=2" in logged and "secretivex stopped" in logged
    assert f"Agent pid {pid} killed" in killed.stdout
    assert _gone(pid)
    assert not sock.exists()


def test_csh_eval_and_kill_by_socket(tmp_path: Path) -> None:
    require_tool("csh")
    sock = tmp_path / "c.sock"
    env = _env(tmp_path, SHELL="/bin/csh")
    # $SHELL ends in csh: setenv syntax without -c, as ssh-agent decides.
    script = (
        f"eval `secretivex agent --daemon -a {sock}`; "
        'echo "sock=$SSH_AUTH_SOCK pid=$SSH_AGENT_PID"; '
        f"secretivex agent -k -a {sock}"
    )
    result = _shell(["csh", "-c"], script, env)
    assert result.returncode == 0, result.stderr
    pid = _pid_from(result.stdout)
    assert f"sock={sock} pid={pid}" in result.stdout
    assert result.stdout.endswith(
        f"unsetenv SSH_AUTH_SOCK;\nunsetenv SSH_AGENT_PID;\necho Agent pid {pid} killed;\n"
    )
    assert _wait_gone(pid) and not sock.exists()
    # -c forces csh syntax whatever $SHELL says.
    printed = _shell(["bash", "-c"], f"secretivex agent --daemon -c -a {sock}", _env(tmp_path))
    pid = _pid_from(printed.stdout)
    try:
        assert printed.stdout == (
            f"setenv SSH_AUTH_SOCK {sock};\nsetenv SSH_AGENT_PID {pid};\necho Agent pid {pid};\n"
        )
    finally:
        subprocess.run([SECRETIVEX, "agent", "--kill", "--socket", str(sock)], timeout=60)
    assert _gone(pid) and not sock.exists()


def test_daemon_startup_error_is_one_line_exit_1(tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    env = _env(tmp_path)
    first = _shell(["bash", "-c"], f"secretivex agent --daemon -a {sock}", env)
    pid = _pid_from(first.stdout)
    try:
        second = _shell(["bash", "-c"], f"secretivex agent --daemon -a {sock}", env)
        assert second.returncode == 1
        assert second.stdout == ""
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert "already listening" in second.stderr
    finally:
        subprocess.run(
            [SECRETIVEX, "agent", "--kill"],
            env={**env, "SSH_AGENT_PID": str(pid)},
            timeout=60,
            capture_output=True,
        )
    assert _gone(pid)


@pytest.mark.parametrize(
    ("argv", "env_pid", "code", "message"),
    [
        (["--kill"], None, 1, "SSH_AGENT_PID not set"),
        (["--kill"], "bogus", 1, "not a good PID"),
        (["--kill"], "1", 1, "not a good PID"),
        (["--kill"], str(os.getpid()), 1, "not a secretivex agent"),
        (["--daemon", "-D"], None, 2, "--daemon forks"),
        (["--daemon", "--print-env"], None, 2, "--print-env is for foreground starts"),
        (["-t", "1x"], None, 2, "not a time like"),
        (["-c", "-s", "--daemon"], None, 2, "exclude each other"),
    ],
)
def test_usage_errors(
    tmp_path: Path, argv: list[str], env_pid: str | None, code: int, message: str
) -> None:
    env = _env(tmp_path)
    if env_pid is not None:
        env["SSH_AGENT_PID"] = env_pid
    result = subprocess.run(
        [SECRETIVEX, "agent", *argv], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_quickstart_block_runs_as_written(tmp_path: Path) -> None:
    """docs/quickstart.md's eval/ssh-add/kill block, verbatim, on the zero-config socket."""
    require_tool("bash", "ssh-add")
    doc = (REPO / "docs" / "quickstart.md").read_text()
    block = doc.split("runs this block with bash -->\n```sh\n", 1)[1].split("```", 1)[0]
    env = _env(tmp_path)
    sock = Path(env["XDG_RUNTIME_DIR"]) / "secretivex" / "agent.sock"
    script = "set -e\n" + block.replace("ssh-add -l", "ssh-add -l || test $? -eq 1") + "env\n"
    result = _shell(["bash", "-c"], script, env)
    assert result.returncode == 0, result.stderr
    pid = _pid_from(result.stdout)
    assert "The agent has no identities." in result.stdout
    assert f"Agent pid {pid} killed" in result.stdout
    assert "SSH_AGENT_PID=" not in result.stdout
    assert _gone(pid) and not sock.exists()


def test_default_lifetime_from_config(tmp_path: Path) -> None:
    """agent.default_lifetime in a config file does what -t does."""
    require_tool("ssh-add", "ssh-keygen")
    key = keygen(tmp_path, "cfgkey")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("agent:\n  default_lifetime: 1s\n")
    sock = tmp_path / "l.sock"
    env = _env(tmp_path)
    started = _shell(["bash", "-c"], f"secretivex agent --daemon --config {cfg} -a {sock}", env)
    assert started.returncode == 0, started.stderr
    pid = _pid_from(started.stdout)
    env.update(SSH_AUTH_SOCK=str(sock), SSH_AGENT_PID=str(pid))
    try:
        assert subprocess.run(["ssh-add", str(key)], env=env, capture_output=True).returncode == 0
        deadline = time.monotonic() + 30
        listed = ""
        while time.monotonic() < deadline:
            listed = subprocess.run(
                ["ssh-add", "-l"], env=env, capture_output=True, text=True
            ).stdout
            if "cfgkey" not in listed:
                break
            time.sleep(0.2)
        assert "cfgkey" not in listed
    finally:
        subprocess.run([SECRETIVEX, "agent", "-k"], env=env, capture_output=True, timeout=60)
    assert _gone(pid)


def test_daemon_log_file_through_a_symlink_is_refused_exit_2(tmp_path: Path) -> None:
    """--log-file follows the audit log's rules (AUDIT-REPORT F3): a symlink planted in
    its place is not followed; one line naming the file, exit 2 (a usage error), no
    agent left running."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    link = tmp_path / "agent.log"
    link.symlink_to(victim)
    sock = tmp_path / "agent.sock"
    result = _shell(
        ["bash", "-c"], f"secretivex agent --daemon --log-file {link} -a {sock}", _env(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert (
        result.stderr.strip()
        == f"secretivex: --log-file: {link} is a symlink: refusing to follow it"
    )
    assert victim.read_text() == "precious\n"
    assert not sock.exists()


def test_the_daemon_carries_no_pydantic_or_typer(tmp_path: Path) -> None:
    """``eval "$(secretivex agent --daemon)"`` (every shell's start) parses its options
    without typer, whose parser builds pydantic adapters: the agent it leaves running
    never loaded pydantic's extension (issue 16: start-up and footprint)."""
    require_tool("bash")
    sock = tmp_path / "agent.sock"
    script = f"""
        set -e
        eval "$(secretivex agent --daemon -a {sock})" >/dev/null
        grep -c -e pydantic_core -e /typer/ /proc/$SSH_AGENT_PID/maps || true
        secretivex agent -k >/dev/null
    """
    result = _shell(["bash", "-c"], script, _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0", "the daemon mapped pydantic_core"
