"""Unix sockets the agent serves: safe creation, ownership, and who may connect."""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secretivex.config.filechecks import directory_problem
from secretivex.defaults import SOCKET_PATH_MAX_BYTES
from secretivex.keys.identity import Identity
from secretivex.policy.engine import KeyMatcher, any_match
from secretivex.policy.peer import PeerCredentials

log = logging.getLogger(__name__)


#: Name of the main socket's spec (``agent/server.py`` builds it under this name; the
#: configured listeners are ``listener-<n>``).
MAIN_LISTENER_NAME = "agent"


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
    #: Most connections this socket serves at once; None = only the agent-wide limits.
    max_connections: int | None = None
    #: Group of a socket file handed over by the service manager (SocketGroup=), when
    #: the file grants that group read and write; counts as ``group`` when none is
    #: configured. Kept across reloads: the file is the manager's, not the config's.
    file_group: int | None = None
    #: Set when a reload stopped serving this socket: its open connections are cut.
    retired: bool = False
    _visible: dict[bytes, bool] = field(default_factory=dict, repr=False)

    @property
    def is_main(self) -> bool:
        """The main socket: the owner's, unscoped (sees keys added through any socket)."""
        return self.name == MAIN_LISTENER_NAME

    @property
    def origin(self) -> str:
        """What keys added through this socket record as their origin ("" = main)."""
        return "" if self.is_main else str(self.path)

    def sees(self, ident: Identity) -> bool:
        """Key scope: a key outside it is invisible here and cannot sign here.

        A key ``ssh-add``ed through a scoped listener belongs to that listener: it is
        seen there (whatever ``keys`` says: its peer supplied the private key) and on
        the main socket, never on another listener even if its matchers would match.
        """
        if ident.origin:
            return self.is_main or ident.origin == self.origin
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

    def still_admits(self, peer: PeerCredentials) -> bool:
        """After a reload: whether a connection already open may stay (its socket is
        still served and ``admits`` its peer under the new config)."""
        return not self.retired and self.admits(peer)

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
    return peer.gid in gids or bool(gids & peer.groups())


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


def _check_directory(directory: Path, fd: int) -> os.stat_result:
    """Refuse a directory in which anyone but us (or root) could rename or replace our
    socket: then they could put their own socket in its place and receive the keys the
    owner adds with ssh-add. (The rule is ``config.filechecks.directory_problem``, which
    the audit log and ``--log-file`` use too.)"""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise ListenerError(f"socket directory {directory} is not a directory")
    problem = directory_problem(st)
    if problem:
        raise ListenerError(
            f"socket directory {directory} {problem}: refusing to serve a socket there"
        )
    return st


def _open_directory(directory: Path) -> int:
    """Open the directory itself, never through a symlink (checks then act on the fd)."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(directory)):
            raise ListenerError(
                f"socket directory {directory} is a symlink: refusing to serve a socket there"
            ) from None
        raise ListenerError(f"socket directory {directory}: {exc.strerror or exc}") from None


def _ensure_directory(directory: Path, mode: int, group: int | None) -> None:
    """Create the socket's directory owner-only (0700), opened just enough for
    group/other access when the socket's own mode grants it, and verify it after
    creation (someone may race the mkdir). An existing directory is used only if it is
    safe (see :func:`_check_directory`); its mode is left as its owner set it."""
    created = False
    if not os.path.lexists(directory):
        directory.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
            created = True
        except FileExistsError:
            pass  # someone else was first: judged below like any existing directory
    fd = _open_directory(directory)
    try:
        st = _check_directory(directory, fd)
        if not created:
            return
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ListenerError(
                f"socket directory {directory} changed after it was created "
                f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): refusing to use it"
            )
        dir_mode = 0o700
        if mode & 0o070:
            dir_mode |= 0o010
        if mode & 0o007:
            dir_mode |= 0o001
        os.fchmod(fd, dir_mode)
        if group is not None:
            os.fchown(fd, -1, group)
    finally:
        os.close(fd)


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


@dataclass(frozen=True)
class BoundSocket:
    """A listening socket and the identity of the file it bound, so that on exit we
    remove that file only, never a successor's socket at the same path."""

    sock: socket.socket
    dev: int
    ino: int


def bind_listener(spec: ListenerSpec, backlog: int = 512) -> BoundSocket:
    """Bind ``spec.path`` with its final mode from the first instant (umask), never
    briefly world-accessible, in a directory no other uid controls."""
    path = spec.path
    if len(os.fsencode(str(path))) > SOCKET_PATH_MAX_BYTES:
        raise ListenerError(f"{path}: socket path longer than {SOCKET_PATH_MAX_BYTES} bytes")
    sock: socket.socket | None = None
    try:
        _ensure_directory(path.parent, spec.mode, spec.group)
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        st = path.lstat()
        if not apply_mode_and_owner(path, spec, (st.st_dev, st.st_ino)):
            raise ListenerError(f"{path} was replaced while the agent was creating it")
        sock.listen(backlog)
        sock.setblocking(False)
    except ListenerError:
        if sock is not None:
            sock.close()
        raise
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ListenerError(f"{path}: {exc.strerror or exc}") from None
    return BoundSocket(sock, st.st_dev, st.st_ino)


def apply_mode_and_owner(
    path: Path, spec: ListenerSpec, identity: tuple[int, int] | None = None
) -> bool:
    """Give a socket file the mode, owner and group its listener declares.

    Never through a symlink and never to anything but a socket (``identity``: the
    ``(st_dev, st_ino)`` we bound, when known): whoever can write the socket's directory
    (root in a container given a read-write mount, the socket's owner in a sticky
    directory) could otherwise swap in a symlink and have the agent — often root —
    chmod/chown any file it names. False (with a WARNING) when the path is no longer
    our socket; it is then left alone.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("not changing %s: %s", path, exc.strerror or exc)
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or (
            identity is not None and (st.st_dev, st.st_ino) != identity
        ):
            log.warning(
                "not changing the mode or owner of %s: it is no longer the socket this "
                "agent bound (replaced by uid %d); restart the agent to serve it again",
                path,
                st.st_uid,
            )
            return False
        # The O_PATH handle pins the inode we checked; /proc/self/fd reaches it (chmod
        # and chown need a path: fchmod on a socket fd would change the socket, not
        # the file).
        handle = f"/proc/self/fd/{fd}"
        os.chmod(handle, spec.mode)
        if spec.owner is not None or spec.group is not None:
            os.chown(
                handle,
                -1 if spec.owner is None else spec.owner,
                -1 if spec.group is None else spec.group,
            )
        return True
    finally:
        os.close(fd)


def unlink_socket(path: Path, dev: int, ino: int) -> None:
    """Remove our socket file on exit: only if the file at ``path`` is still the one we
    bound (a successor may have replaced it while we drained)."""
    with contextlib.suppress(OSError):
        st = path.lstat()
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino):
            path.unlink()
        elif stat.S_ISSOCK(st.st_mode):
            log.info("left %s in place: it is no longer the socket this agent bound", path)


def describe(specs: Sequence[ListenerSpec]) -> str:
    return ", ".join(f"{s.name}={s.path}" for s in specs)
