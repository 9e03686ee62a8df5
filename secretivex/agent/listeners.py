"""Unix sockets the agent serves: safe creation, ownership, and who may connect."""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secretivex.policy.engine import KeyMatcher, any_match
from secretivex.policy.peer import PeerCredentials
from secretivex.stores.base import Identity

log = logging.getLogger(__name__)


class ListenerError(Exception):
    """A socket could not be set up; the message says which path and why."""


@dataclass(eq=False)
class ListenerSpec:
    """What one socket serves and to whom. The main socket is a spec like any other."""

    name: str
    path: Path
    mode: int = 0o600
    owner: int | None = None
    group: int | None = None
    keys: tuple[KeyMatcher, ...] = ()  # empty = every key
    peer_uids: frozenset[int] = frozenset()
    peer_gids: frozenset[int] = frozenset()
    allow_add: bool = True
    allow_lock: bool = True
    #: Group of a socket file handed over by the service manager (SocketGroup=), when
    #: the file grants that group read and write; counts as ``group`` when none is
    #: configured. Kept across reloads: the file is the manager's, not the config's.
    file_group: int | None = None
    _visible: dict[bytes, bool] = field(default_factory=dict, repr=False)

    def sees(self, ident: Identity) -> bool:
        """Key scope: a key outside it is invisible here and cannot sign here."""
        if not self.keys:
            return True
        seen = self._visible.get(ident.blob)
        if seen is None:
            seen = any_match(self.keys, ident)
            if len(self._visible) > 4096:
                self._visible.clear()
            self._visible[ident.blob] = seen
        return seen

    def admits(self, peer: PeerCredentials) -> bool:
        """Who may talk to this socket, beyond what its file mode already lets connect.

        The agent's own uid and root always. With ``peers`` set, the uids and groups
        listed there, and nobody else: ``peers`` narrows. Without it, members of the
        socket's group (``group``, else an inherited socket file's group), primary or
        supplementary, as the kernel's permission check counts them.
        """
        if peer.uid in (0, os.getuid()):
            return True
        if self.peer_uids or self.peer_gids:
            return peer.uid in self.peer_uids or _in_groups(peer, self.peer_gids)
        group = self.group if self.group is not None else self.file_group
        return group is not None and _in_groups(peer, frozenset((group,)))

    def adopt_socket_file(self) -> None:
        """Note the group of an inherited socket file that grants its group access
        (the admin's SocketGroup=/SocketMode=), so its members are admitted."""
        try:
            st = self.path.stat()
        except OSError:
            return
        if stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o060 == 0o060:
            self.file_group = st.st_gid

    def same_socket(self, other: ListenerSpec) -> bool:
        return (self.path, self.mode, self.owner, self.group) == (
            other.path,
            other.mode,
            other.owner,
            other.group,
        )


def _in_groups(peer: PeerCredentials, gids: frozenset[int]) -> bool:
    """Primary gid first (free); supplementary groups only when that misses."""
    if not gids:
        return False
    return peer.gid in gids or bool(gids & supplementary_groups(peer.pid))


def supplementary_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def resolve_uid(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise ListenerError(f"unknown user {value!r}") from None


def resolve_gid(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ListenerError(f"unknown group {value!r}") from None


def _ensure_directory(directory: Path, mode: int, group: int | None) -> None:
    """Create the socket's directory owner-only (0700), opened just enough for
    group/other access when the socket's own mode grants it. Existing directories are
    left as their owner set them."""
    if directory.is_dir():
        return
    dir_mode = 0o700
    if mode & 0o070:
        dir_mode |= 0o010
    if mode & 0o007:
        dir_mode |= 0o001
    directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.chmod(directory, dir_mode)
    if group is not None:
        os.chown(directory, -1, group)


def _remove_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: a stale socket from a crash
        log.info("removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise ListenerError(f"another agent is already listening on {path}")


def bind_listener(spec: ListenerSpec, backlog: int = 512) -> socket.socket:
    """Bind ``spec.path`` with its final mode from the first instant (umask), never
    briefly world-accessible."""
    path = spec.path
    if len(os.fsencode(str(path))) > 107:
        raise ListenerError(f"{path}: socket path longer than 107 bytes")
    try:
        _ensure_directory(path.parent, spec.mode, spec.group)
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, spec.mode)
        if spec.owner is not None or spec.group is not None:
            os.chown(
                path,
                -1 if spec.owner is None else spec.owner,
                -1 if spec.group is None else spec.group,
            )
        sock.listen(backlog)
        sock.setblocking(False)
    except ListenerError:
        raise
    except OSError as exc:
        with contextlib.suppress(Exception):
            sock.close()
        raise ListenerError(f"{path}: {exc.strerror or exc}") from None
    return sock


def unlink_socket(path: Path) -> None:
    """Remove our socket file on exit (never anything that is not a socket)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def describe(specs: Sequence[ListenerSpec]) -> str:
    return ", ".join(f"{s.name}={s.path}" for s in specs)
