"""ssh-agent's workstation habits: ``--daemon`` (fork once listening) and ``--kill``.

The fork happens before the event loop exists (no threads, no loop state to copy);
the child detaches (new session, stdio on /dev/null so ``$(...)`` in the parent shell
returns) and reports over a pipe once its socket listens, or why it could not start.
The parent waits for that report, so the printed ``SSH_AUTH_SOCK`` is usable at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path

#: How long ``--kill`` waits for the agent to drain and remove its sockets.
KILL_WAIT_S = 15.0

_READY = b"ready "
_ERROR = b"error "
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC")


class DaemonError(Exception):
    """The agent could not be started or stopped; the message is one line for the user."""


def use_csh(csh: bool, sh: bool) -> bool:
    """csh syntax when asked, else when $SHELL ends in csh (as ssh-agent decides)."""
    if csh or sh:
        return csh
    return os.environ.get("SHELL", "").endswith("csh")


def env_lines(socket_path: Path, pid: int, *, csh: bool) -> str:
    """What ssh-agent prints for ``eval``: the two variables and an echo of the pid."""
    if csh:
        return (
            f"setenv SSH_AUTH_SOCK {socket_path};\n"
            f"setenv SSH_AGENT_PID {pid};\n"
            f"echo Agent pid {pid};\n"
        )
    return (
        f"SSH_AUTH_SOCK={socket_path}; export SSH_AUTH_SOCK;\n"
        f"SSH_AGENT_PID={pid}; export SSH_AGENT_PID;\n"
        f"echo Agent pid {pid};\n"
    )


def kill_lines(pid: int, *, csh: bool) -> str:
    unset = "unsetenv" if csh else "unset"
    return f"{unset} SSH_AUTH_SOCK;\n{unset} SSH_AGENT_PID;\necho Agent pid {pid} killed;\n"


# -- starting -------------------------------------------------------------------------


def spawn(
    serve: Callable[[Callable[[Path], None]], None], *, log_file: Path | None = None
) -> tuple[int, Path]:
    """Fork; the child calls ``serve(on_listening)`` and never returns here.

    Returns (child pid, main socket) once the child listens; raises ``DaemonError``
    with the child's own one-line reason when it could not start.
    """
    log_fd = _open_log(log_file) if log_file is not None else None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; tests observe it from outside
        os.close(read_fd)
        os._exit(_child(serve, write_fd, log_fd))
    os.close(write_fd)
    if log_fd is not None:
        os.close(log_fd)
    report = _read_all(read_fd)
    if report.startswith(_READY):
        return pid, Path(os.fsdecode(report[len(_READY) :].rstrip(b"\n")))
    _, status = os.waitpid(pid, 0)
    if report.startswith(_ERROR):
        raise DaemonError(report[len(_ERROR) :].decode(errors="replace").strip())
    code = os.waitstatus_to_exitcode(status)
    raise DaemonError(f"the agent exited (status {code}) before its socket listened")


def _open_log(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonError(f"cannot open log file {path}: {exc.strerror}") from None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _child(
    serve: Callable[[Callable[[Path], None]], None], report_fd: int, log_fd: int | None
) -> int:  # pragma: no cover - child process
    """Detach, serve, and tell the parent how starting went."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log_fd if log_fd is not None else devnull, 2)
    os.close(devnull)
    if log_fd is not None:
        os.close(log_fd)
    for name in _SYSTEMD_VARS:  # the parent's service manager is not ours
        os.environ.pop(name, None)
    os.chdir("/")
    # A terminal's hangup or ^C reaches the new session no longer; SIGHUP keeps its
    # meaning "reload" inside the agent.
    reported = False

    def on_listening(path: Path) -> None:
        nonlocal reported
        os.write(report_fd, _READY + os.fsencode(str(path)) + b"\n")
        os.close(report_fd)
        reported = True

    try:
        serve(on_listening)
    except BaseException as exc:  # the parent needs a reason, whatever it is
        if not reported:
            with contextlib.suppress(OSError):
                os.write(report_fd, _ERROR + _one_line(exc).encode() + b"\n")
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    """The innermost message of a (possibly grouped) startup exception."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- stopping -------------------------------------------------------------------------


def socket_pid(path: Path) -> int | None:
    """Pid of the process that listens on ``path`` (SO_PEERCRED), None when nobody does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(os.fsencode(str(path)))
        except OSError:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, _, _ = struct.unpack("3i", creds)
    return pid or None


def _is_secretivex(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"secretivex" in part for part in argv[:3])


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


def find_agent(pid_text: str | None, socket_path: Path | None) -> tuple[int, Path | None]:
    """The agent to stop: the one listening on ``socket_path`` when given, else
    ``SSH_AGENT_PID``; plus the socket to clean up after it."""
    if socket_path is not None:
        pid = socket_pid(socket_path)
        if pid is None:
            raise DaemonError(f"no agent listens on {socket_path}")
    else:
        if not pid_text:
            raise DaemonError("SSH_AGENT_PID not set, cannot kill agent (or pass --socket)")
        try:
            pid = int(pid_text)
        except ValueError:
            pid = 0
        if pid < 2:
            raise DaemonError(f'SSH_AGENT_PID="{pid_text}", which is not a good PID')
        auth_sock = os.environ.get("SSH_AUTH_SOCK")
        if auth_sock and socket_pid(Path(auth_sock)) == pid:
            socket_path = Path(auth_sock)
    if not _is_secretivex(pid):
        if not _alive(pid):
            raise DaemonError(f"no agent with pid {pid} (it has exited)")
        raise DaemonError(
            f"pid {pid} is not a secretivex agent (a service manager's socket? "
            "stop it there); nothing killed"
        )
    return pid, socket_path


def kill_agent(pid: int, socket_path: Path | None, *, wait_s: float = KILL_WAIT_S) -> None:
    """SIGTERM the agent, wait for it to exit, and remove its socket if it left one."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise DaemonError(f"no process with pid {pid}") from None
        pidfd = None
    try:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as exc:
            raise DaemonError(f"kill -TERM {pid}: {exc.strerror}") from None
        if not _wait_exit(pid, pidfd, wait_s):
            raise DaemonError(f"agent pid {pid} did not exit within {wait_s:.0f} s")
    finally:
        if pidfd is not None:
            os.close(pidfd)
    if socket_path is not None:
        _remove_stale_socket(socket_path)


def _wait_exit(pid: int, pidfd: int | None, wait_s: float) -> bool:
    if pidfd is not None:
        readable, _, _ = select.select([pidfd], [], [], wait_s)
        return bool(readable)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _remove_stale_socket(path: Path) -> None:
    """The agent removes its own socket; this cleans up after one that could not."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except OSError:
        return
    if socket_pid(path) is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
