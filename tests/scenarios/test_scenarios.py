"""Run the session scripts in this directory (``*.txt``), one test each.

A script is what a person would type, with the output they would check, in the style of
Go's testscript (as ssh-tpm-agent keeps ``testdata/script/*.txt``). See README.md for
the commands. Every line runs against real processes: the real agent, ssh-add,
ssh-keygen, ssh and sshd. A command that fails, or an expectation that does not hold,
fails the test with the script name, the line and the last command's output.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import (
    SECRETIVEX,
    AgentProcess,
    Sshd,
    require_tool,
    start_agent,
    start_sshd,
    wait_for_socket,
)

HERE = Path(__file__).parent
SCRIPTS = sorted(HERE.glob("*.txt"))
FILE_HEADER = re.compile(r"^-- (\S+) --$")


class ScriptFailure(AssertionError):
    pass


def parse(text: str) -> tuple[list[tuple[int, str]], dict[str, str]]:
    """(numbered command lines, embedded files) of a script."""
    commands: list[tuple[int, str]] = []
    files: dict[str, str] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        header = FILE_HEADER.match(line)
        if header:
            current = header.group(1)
            files[current] = ""
        elif current is not None:
            files[current] += line + "\n"
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append((number, line.strip()))
    return commands, files


@dataclass
class Session:
    """The state one script runs in: its work directory, environment, processes."""

    work: Path
    env: dict[str, str]
    agent: AgentProcess | None = None
    sshd: Sshd | None = None
    stdout: str = ""
    stderr: str = ""
    status: int = 0
    background: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def expand(self, word: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.env.get(m.group(1), m.group(0)), word)

    # -- commands (each: args, negated) ----------------------------------------------

    def cmd_exec(self, args: list[str], negated: bool) -> None:
        proc = subprocess.run(
            args, env=self.env, cwd=self.work, capture_output=True, text=True, timeout=120
        )
        self.stdout, self.stderr, self.status = proc.stdout, proc.stderr, proc.returncode
        if (proc.returncode == 0) == negated:
            want = "to fail" if negated else "to succeed"
            raise ScriptFailure(f"expected {args[0]} {want}, exit {proc.returncode}")

    def cmd_secretivex(self, args: list[str], negated: bool) -> None:
        self.cmd_exec([SECRETIVEX, *args], negated)

    def cmd_ssh(self, args: list[str], negated: bool) -> None:
        if self.sshd is None:
            raise ScriptFailure("ssh needs `sshd start` first")
        options: list[str] = []
        while len(args) > 1 and args[0] == "-o":  # ssh options before the command
            options += args[:2]
            args = args[2:]
        self.cmd_exec([*self.sshd.ssh_argv(*options), *args], negated)

    def _match(self, text: str, what: str, args: list[str], negated: bool) -> None:
        (pattern,) = args
        found = re.search(pattern, text, re.MULTILINE) is not None
        if found == negated:
            raise ScriptFailure(f"{what} {'matches' if found else 'does not match'} {pattern!r}")

    def cmd_stdout(self, args: list[str], negated: bool) -> None:
        self._match(self.stdout, "stdout", args, negated)

    def cmd_stderr(self, args: list[str], negated: bool) -> None:
        self._match(self.stderr, "stderr", args, negated)

    def cmd_log(self, args: list[str], negated: bool) -> None:
        if self.agent is None:
            raise ScriptFailure("log needs a started agent")
        self._match(self.agent.log(), "agent log", args, negated)

    def cmd_env(self, args: list[str], negated: bool) -> None:
        for assignment in args:
            name, _, value = assignment.partition("=")
            self.env[name] = value

    def cmd_exists(self, args: list[str], negated: bool) -> None:
        for name in args:
            if (self.work / name).exists() == negated:
                raise ScriptFailure(f"{name} {'exists' if not negated else 'is missing'}")

    def cmd_cp(self, args: list[str], negated: bool) -> None:
        source, target = args
        text = {"stdout": self.stdout, "stderr": self.stderr}.get(source)
        if text is None:
            text = (self.work / source).read_text()
        (self.work / target).write_text(text)

    def cmd_cmp(self, args: list[str], negated: bool) -> None:
        left, right = args
        text = {"stdout": self.stdout, "stderr": self.stderr}.get(left)
        if text is None:
            text = (self.work / left).read_text()
        if (text == (self.work / right).read_text()) == negated:
            raise ScriptFailure(f"{left} and {right} {'are equal' if negated else 'differ'}")

    def cmd_status(self, args: list[str], negated: bool) -> None:
        if (self.status == int(args[0])) == negated:
            raise ScriptFailure(f"exit status was {self.status}")

    def cmd_bg(self, args: list[str], negated: bool) -> None:
        """``bg NAME CMD...``: start a background process (stopped at the end)."""
        name, *argv = args
        proc = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.background[name] = proc

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                proc.terminate()
            proc.wait(10)

        self.cleanups.append(stop)

    def cmd_kill(self, args: list[str], negated: bool) -> None:
        """``kill NAME [SIGNAL]``: signal a background process (TERM: and wait for it)."""
        name, *rest = args
        signum = getattr(signal, f"SIG{rest[0] if rest else 'TERM'}")
        proc = self.background[name]
        proc.send_signal(signum)
        if signum == signal.SIGTERM:
            proc.wait(10)

    def cmd_wait_socket(self, args: list[str], negated: bool) -> None:
        wait_for_socket(self.work / args[0])

    def cmd_mkdir(self, args: list[str], negated: bool) -> None:
        for name in args:
            (self.work / name).mkdir(parents=True, exist_ok=True)

    def cmd_sleep(self, args: list[str], negated: bool) -> None:
        time.sleep(float(args[0]))

    def cmd_require(self, args: list[str], negated: bool) -> None:
        require_tool(*args)

    def cmd_agent(self, args: list[str], negated: bool) -> None:
        action, *rest = args
        if action == "start":
            if self.agent is not None:
                raise ScriptFailure("agent already started")
            extra = {k: v for k, v in self.env.items() if os.environ.get(k) != v}
            extra.pop("HOME", None)
            self.agent = start_agent(self.work, *rest, env=extra)
            self.cleanups.append(self.agent.stop)
            self.env["SSH_AUTH_SOCK"] = str(self.agent.socket)
        elif action == "stop":
            assert self.agent is not None
            code = self.agent.stop()
            if (code == 0) == negated:
                raise ScriptFailure(f"agent exited {code}")
            self.agent = None
        elif action == "signal":
            assert self.agent is not None
            self.agent.signal(getattr(signal, f"SIG{rest[0]}"))
        else:
            raise ScriptFailure(f"unknown agent action {action!r}")

    def cmd_sshd(self, args: list[str], negated: bool) -> None:
        action, *rest = args
        if action != "start" or self.sshd is not None:
            raise ScriptFailure("usage: sshd start [AUTHORIZED_KEYS_FILE [SSHD_CONFIG_FILE]]")
        require_tool("/usr/sbin/sshd")
        keys = (self.work / rest[0]).read_text().splitlines() if rest else []
        extra = (self.work / rest[1]).read_text() if len(rest) > 1 else ""
        sshd = start_sshd(self.work, [k for k in keys if k.strip()], extra_config=extra)
        self.sshd = sshd

        def stop() -> None:
            sshd.proc.terminate()
            sshd.proc.wait(10)

        self.cleanups.append(stop)
        self.env["SSHD_LOG"] = str(sshd.log_path)


def run_script(path: Path, work: Path) -> None:
    commands, files = parse(path.read_text())
    home = work / "home"
    home.mkdir(mode=0o700)
    env = dict(
        os.environ,
        WORK=str(work),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        LOGIN=pwd.getpwuid(os.getuid()).pw_name,
    )
    for name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "SECRETIVEX_CONFIG", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    session = Session(work, env)
    for name, content in files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(session.expand(content))
    try:
        for number, line in commands:
            negated = line.startswith("! ")
            words = [session.expand(w) for w in shlex.split(line[2:] if negated else line)]
            handler = getattr(session, f"cmd_{words[0].replace('-', '_')}", None)
            if handler is None:
                raise ScriptFailure(f"{path.name}:{number}: unknown command {words[0]!r}")
            try:
                handler(words[1:], negated)
            except ScriptFailure as exc:
                raise ScriptFailure(
                    f"{path.name}:{number}: {line}\n  {exc}\n"
                    f"--- stdout ---\n{session.stdout}--- stderr ---\n{session.stderr}"
                ) from None
    finally:
        for cleanup in reversed(session.cleanups):
            cleanup()


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


@pytest.mark.openssh
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_scenario(script: Path, work: Path) -> None:
    require_tool("ssh-add", "ssh-keygen")
    run_script(script, work)
