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
import re
import select
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from secretivex.peercred import peer_ids

#: How long ``--kill`` waits for the agent to drain and remove its sockets.
KILL_WAIT_S = 15.0

_READY = b"ready "
_ERROR = b"error "
_SYSTEMD_VARS = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC")


class DaemonError(Exception):
    """The agent could not be started or stopped; the message is one line for the user."""

    exit_code = 1


class LogFileError(DaemonError):
    """``--log-file`` names a file the agent must not write (a usage error)."""

    exit_code = 2


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
    """The audit log's rules (``config.filechecks``): no symlink, our own regular file,
    in a directory nobody else can change."""
    from secretivex.config.filechecks import UnsafePathError, open_append

    try:
        return open_append(path)
    except UnsafePathError as exc:
        raise LogFileError(f"--log-file: {exc}") from None


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
        pid = peer_ids(sock)[0]
    return pid or None


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


_PYTHON = re.compile(rb"python[0-9.]*")
#: The console script, or Nix's wrapped copy of it (``.secretivex-wrapped``).
_SCRIPT = re.compile(rb"\.?secretivex(-wrapped)?")


def is_agent_invocation(argv: list[bytes]) -> bool:
    """``secretivex agent ...``, as the console script, its shebang interpreter
    (``python3 /…/bin/secretivex agent``) or ``python -m secretivex agent`` runs it
    (a ``--daemon`` child keeps its parent's argv). Not ``less secretivex-notes.txt``,
    ``vim …/secretivex/x.py``, ``secretivex client …``."""
    if not argv:
        return False
    rest = argv[1:]
    if not _SCRIPT.fullmatch(os.path.basename(argv[0])):
        if not _PYTHON.fullmatch(os.path.basename(argv[0])):
            return False
        while rest and rest[0].startswith(b"-") and rest[0] != b"-m":
            # interpreter options (-I, -E, -s, -u, ...; -X and -W take a value)
            rest = rest[2:] if rest[0] in (b"-X", b"-W") else rest[1:]
        if rest[:2] == [b"-m", b"secretivex"]:
            rest = rest[2:]
        elif rest and _SCRIPT.fullmatch(os.path.basename(rest[0])):
            rest = rest[1:]
        else:
            return False
    return rest[:1] == [b"agent"]


def _uids(pid: int) -> tuple[int, int] | None:
    """Real and effective uid (``/proc/PID/status``: an agent that made itself
    non-dumpable has a root-owned ``/proc/PID``, its status still says whose it is)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    real, effective = line.split()[1:3]
                    return int(real), int(effective)
    except (OSError, ValueError):
        pass
    return None


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]


class Target:
    """The agent ``--kill`` stops: its pid, a pidfd that pins that very process (None
    where pidfds are unavailable), and the socket to clean up after it."""

    def __init__(self, pid: int, pidfd: int | None, socket_path: Path | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.socket_path = socket_path

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except AttributeError:  # pragma: no cover - not Linux
        return None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise DaemonError(f"no agent with pid {pid} (it has exited)") from None
        if exc.errno in (errno.ENOSYS, errno.EPERM):  # old kernel, seccomp
            return None
        raise DaemonError(f"pidfd_open({pid}): {exc.strerror}") from None


def _still_there(pidfd: int | None) -> bool:
    """The pinned process has not exited: so what /proc/PID said since the pidfd was
    opened described it, not a successor that reuses the pid."""
    if pidfd is None:
        return True
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; whether we may signal it is decided when we do
    return True


def find_agent(pid_text: str | None, socket_path: Path | None) -> Target:
    """The agent to stop, pinned by a pidfd before it is checked.

    Identified by the socket when there is one: the pid listening on ``socket_path``
    (``--socket``) or on ``SSH_AUTH_SOCK`` when that is ``SSH_AGENT_PID`` (SO_PEERCRED).
    Else by ``SSH_AGENT_PID`` alone, which must then be a ``secretivex agent`` process
    of the caller's own uid (a stale pid may name anything by now). Either way the
    process must be running ``secretivex agent`` (a socket systemd holds is not it).
    """
    by_socket = socket_path is not None
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
            socket_path, by_socket = Path(auth_sock), True
    pidfd = _pidfd(pid)
    target = Target(pid, pidfd, socket_path)
    try:
        _check(target, by_socket)
    except BaseException:
        target.close()
        raise
    return target


def _check(target: Target, by_socket: bool) -> None:
    pid = target.pid
    # Read about the process only now that the pidfd pins it; then make sure the pinned
    # process is still there (so what was read was about it, not about a reused pid).
    argv = _argv(pid)
    uids = _uids(pid)
    listening = socket_pid(target.socket_path) if by_socket and target.socket_path else None
    if not _still_there(target.pidfd) or not _alive(pid):
        raise DaemonError(f"no agent with pid {pid} (it has exited)")
    if by_socket and listening != pid:
        raise DaemonError(f"pid {pid} no longer listens on {target.socket_path}; nothing killed")
    if not is_agent_invocation(argv):
        if by_socket:
            raise DaemonError(
                f"pid {pid} listens on {target.socket_path} but is not a secretivex agent "
                "(a service manager's socket? stop it there); nothing killed"
            )
        raise DaemonError(
            f"pid {pid} is not a secretivex agent (a stale SSH_AGENT_PID?); nothing killed"
        )
    me = os.getuid()
    if not by_socket and (uids is None or uids[0] != me or uids[1] != me):
        owner = "an unknown uid" if uids is None else f"uid {uids[1]}"
        raise DaemonError(
            f"pid {pid} belongs to {owner}, not to you (uid {me}): SSH_AGENT_PID alone "
            "does not prove it is your agent (pass --socket); nothing killed"
        )


def kill_agent(target: Target, *, wait_s: float = KILL_WAIT_S) -> None:
    """SIGTERM the agent through its pidfd, wait for it to exit, and remove its socket
    if it left one."""
    pid = target.pid
    try:
        try:
            if target.pidfd is not None:
                signal.pidfd_send_signal(target.pidfd, signal.SIGTERM)
            else:  # pragma: no cover - kernels without pidfd_open (< 5.3)
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # exited meanwhile: what --kill wanted
        except OSError as exc:
            raise DaemonError(f"kill -TERM {pid}: {exc.strerror}") from None
        if not _wait_exit(pid, target.pidfd, wait_s):
            raise DaemonError(f"agent pid {pid} did not exit within {wait_s:.0f} s")
    finally:
        target.close()
    if target.socket_path is not None:
        _remove_stale_socket(target.socket_path)


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
