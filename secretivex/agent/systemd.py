"""systemd glue without libsystemd: socket activation and the notify protocol.

``listen_fds()`` follows ``sd_listen_fds_with_names(3)``: the sockets a service manager
(systemd, ``systemd-socket-activate``, or anything speaking the same protocol) hands
over start at fd 3; ``LISTEN_FDS`` says how many, ``LISTEN_PID`` says for which
process (so a child that merely inherited the environment ignores them) and
``LISTEN_FDNAMES`` names them (``FileDescriptorName=`` in a ``.socket`` unit).

``notify()`` follows ``sd_notify(3)``: one datagram to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). It never
raises: a service that is not run by systemd simply gets ``False``.

Only the standard library is used.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

__all__ = [
    "LISTEN_FDS_START",
    "MAIN_FD_NAMES",
    "InheritedSocket",
    "SystemdError",
    "listen_fds",
    "notify",
    "parse_listen_env",
    "take_inherited",
]

LISTEN_FDS_START = 3
"""The first inherited file descriptor (``SD_LISTEN_FDS_START``)."""

MAIN_FD_NAMES = frozenset({"agent", "main"})
"""fd names that mean "the agent's main socket" (an unnamed fd means it too)."""

_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_MAX_FDS = 4096  # far above anything sane; guards against a garbage LISTEN_FDS
_MAX_NAME = 255  # systemd's limit for FileDescriptorName=


class SystemdError(ValueError):
    """The socket-activation environment is present but malformed.

    The message names the variable and what is wrong with it, so a unit that hands
    over broken state fails with one clear journal line.
    """


@dataclass(frozen=True)
class InheritedSocket:
    """One socket passed in by the service manager.

    ``name`` is its ``FileDescriptorName=`` (``None`` when the manager sent no names).
    ``socket`` owns the descriptor: close it, or hand it to the event loop.
    """

    fd: int
    name: str | None
    socket: socket.socket

    @property
    def is_main(self) -> bool:
        """True for the agent's main socket: an unnamed fd, or one named agent/main."""
        return self.name is None or self.name in MAIN_FD_NAMES

    @property
    def path(self) -> str | None:
        """Filesystem path of an AF_UNIX socket (``@name`` for abstract ones), else None."""
        if self.socket.family != socket.AF_UNIX:
            return None
        try:
            addr = self.socket.getsockname()
        except OSError:
            return None
        if isinstance(addr, bytes):  # abstract namespace: leading NUL
            return "@" + addr[1:].decode("utf-8", "replace") if addr else None
        if isinstance(addr, str) and addr:
            return "@" + addr[1:] if addr.startswith("\0") else addr
        return None

    @property
    def listening(self) -> bool:
        """True when the socket is in the listening state (``SO_ACCEPTCONN``)."""
        try:
            return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            return False


def _int_var(environ: Mapping[str, str], var: str) -> int:
    raw = environ[var]
    text = raw.strip()
    if not text.isdigit() or not text.isascii():
        raise SystemdError(f"{var}={raw!r} is not a non-negative integer")
    return int(text)


def parse_listen_env(
    environ: Mapping[str, str], pid: int | None = None
) -> list[tuple[int, str | None]]:
    """The ``(fd, name)`` pairs the environment announces for process ``pid``.

    Pure: reads only ``environ``. Returns ``[]`` when ``LISTEN_PID`` or ``LISTEN_FDS``
    is unset or ``LISTEN_PID`` names another process. Raises ``SystemdError`` when a
    variable is malformed or ``LISTEN_FDNAMES`` has the wrong number of names.
    """
    if pid is None:
        pid = os.getpid()
    if "LISTEN_PID" not in environ or "LISTEN_FDS" not in environ:
        return []
    if _int_var(environ, "LISTEN_PID") != pid:
        return []
    count = _int_var(environ, "LISTEN_FDS")
    if count > _MAX_FDS:
        raise SystemdError(f"LISTEN_FDS={count} is implausibly large")
    names: list[str | None]
    raw_names = environ.get("LISTEN_FDNAMES")
    if raw_names is None:
        names = [None] * count
    else:
        parts = raw_names.split(":") if count else []
        if len(parts) != count:
            raise SystemdError(f"LISTEN_FDNAMES has {len(parts)} name(s) but LISTEN_FDS={count}")
        names = []
        for part in parts:
            if len(part) > _MAX_NAME or not part.isprintable():
                raise SystemdError(f"LISTEN_FDNAMES holds an invalid name {part!r}")
            names.append(part or None)
    return [(LISTEN_FDS_START + i, names[i]) for i in range(count)]


def _unset(environ: MutableMapping[str, str]) -> None:
    for var in _LISTEN_VARS:
        environ.pop(var, None)


def listen_fds(unset_env: bool = True) -> list[InheritedSocket]:
    """Adopt the sockets passed by socket activation, in fd order.

    Each fd is marked close-on-exec (so confirm hooks and other children do not
    inherit the listening sockets) and wrapped in a ``socket.socket`` whose family and
    type come from the kernel. With ``unset_env`` (the default) the ``LISTEN_*``
    variables are removed whatever the outcome, as ``sd_listen_fds(1)`` does, so child
    processes never see them.

    Returns ``[]`` when nothing was passed to this process. Raises ``SystemdError``
    when the environment is malformed or an announced fd is not an open socket.
    """
    try:
        announced = parse_listen_env(os.environ)
    finally:
        if unset_env:
            _unset(os.environ)
    adopted: list[InheritedSocket] = []
    try:
        for fd, name in announced:
            try:
                mode = os.fstat(fd).st_mode
            except OSError as exc:
                raise SystemdError(
                    f"socket activation: fd {fd} ({name or 'unnamed'}) is not open: {exc.strerror}"
                ) from None
            if not stat.S_ISSOCK(mode):
                raise SystemdError(
                    f"socket activation: fd {fd} ({name or 'unnamed'}) is not a socket"
                )
            os.set_inheritable(fd, False)
            adopted.append(InheritedSocket(fd=fd, name=name, socket=socket.socket(fileno=fd)))
    except BaseException:
        for item in adopted:
            item.socket.detach()  # leave the fds as they were; the caller decides
        raise
    return adopted


def socket_path(sock: socket.socket) -> str | None:
    """The filesystem path an AF_UNIX socket is bound to, else None."""
    if sock.family != socket.AF_UNIX:
        return None
    try:
        addr = sock.getsockname()
    except OSError:
        return None
    return addr if isinstance(addr, str) and addr and not addr.startswith("\0") else None


def take_inherited(
    inherited: MutableMapping[str, socket.socket], name: str, path: str
) -> socket.socket | None:
    """Remove and return the inherited socket for the listener ``name`` at ``path``.

    Matched by the path the socket is actually bound to first, so
    ``FileDescriptorName=`` may be any label (paths with a ``:`` or longer than
    systemd's 255-character fd names work too, and a label that names another
    listener cannot swap two sockets); then by fd name (the listener's name or path),
    for sockets whose path cannot be read.
    """
    for key, sock in list(inherited.items()):
        if socket_path(sock) == path:
            return inherited.pop(key)
    for key in (name, path):
        candidate = inherited.get(key)
        if candidate is not None and socket_path(candidate) in (None, path):
            return inherited.pop(key)
    return None


def _notify_address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # relative paths and vsock: addresses are not supported here


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, newline-separated assignments) to the manager.

    A bare ``RELOADING=1`` gets the ``MONOTONIC_USEC`` it needs added automatically.

    Returns True when the datagram was sent, False when not run under systemd
    (``$NOTIFY_SOCKET`` unset or unusable) or when sending failed. Never raises.
    """
    target = os.environ.get("NOTIFY_SOCKET", "")
    if not target or not state:
        return False
    state = _with_monotonic(state)
    address = _notify_address(target)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            payload = state.encode("utf-8")
            sent = sock.sendto(payload, address)
            return sent == len(payload)
    except (OSError, UnicodeError, ValueError):
        return False


def _with_monotonic(state: str) -> str:
    """Add ``MONOTONIC_USEC`` to a bare ``RELOADING=1`` (systemd >= 253 wants it)."""
    lines = state.split("\n")
    if "RELOADING=1" in lines and not any(x.startswith("MONOTONIC_USEC=") for x in lines):
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines.insert(lines.index("RELOADING=1") + 1, f"MONOTONIC_USEC={usec}")
    return "\n".join(lines)
