"""Who is on the other end of a Unix socket: SO_PEERCRED plus provenance from /proc."""

from __future__ import annotations

import functools
import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from secretivex.peercred import peer_ids

#: Linux ``SO_PEERGROUPS`` (4.13+; not named by Python's socket module before 3.14).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_GID = struct.Struct("I")
_MAX_GROUP_BYTES = 1024  # the most CPython's getsockopt accepts


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """A client's SO_PEERCRED: process, user and group ids."""

    pid: int
    uid: int
    gid: int
    #: Lazily filled by ``provenance()``; empty when /proc is not readable.
    exe: str = field(default="", compare=False)
    #: The connection, for :meth:`groups` (None: credentials built without one).
    sock: socket.socket | None = field(default=None, compare=False, repr=False)

    def groups(self) -> frozenset[int]:
        """The peer's supplementary groups as they were at ``connect()``.

        From the socket (``SO_PEERGROUPS``) when there is one: no race with the pid
        being reused and no need for a readable /proc. Else (or on kernels before 4.13)
        from ``/proc/PID/status``; empty when neither says.
        """
        if self.sock is not None:
            try:
                return peer_groups(self.sock)
            except OSError:
                pass
        return proc_groups(self.pid)


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Kernel-verified pid/uid/gid of the connecting process (Linux SO_PEERCRED)."""
    pid, uid, gid = peer_ids(sock)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, sock=sock)


def peer_groups(sock: socket.socket) -> frozenset[int]:
    """Supplementary groups of the process that connected ``sock`` (``SO_PEERGROUPS``:
    the kernel's copy taken at ``connect()``). Raises ``OSError`` where unsupported, or
    (``ERANGE``) for a peer in more groups than Python's ``getsockopt`` has room for
    (1024 bytes: 256 groups)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _MAX_GROUP_BYTES)
    return frozenset(g for (g,) in _GID.iter_unpack(raw))


def proc_groups(pid: int) -> frozenset[int]:
    """Supplementary groups of ``pid`` from ``/proc/PID/status`` (empty if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def _read_comm(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if cmdline and cmdline[0]:
            return os.path.basename(cmdline[0].decode("utf-8", "replace"))
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent_pid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # comm may contain spaces and parentheses: ppid is the 2nd field after the last ")".
    rest = stat[stat.rfind(")") + 2 :].split()
    return int(rest[1]) if len(rest) > 1 else 0


def executable(pid: int) -> str:
    """The peer's executable as ``/proc/PID/exe`` names it.

    For a process in another mount namespace (a container) that path is the one inside
    its namespace: ``/usr/bin/python3.11`` there is not the host's file of that name.
    Such a path says so and names the namespace, e.g.
    ``/usr/bin/ssh-add (in mount namespace mnt:[4026532301])`` (``lsns`` and
    ``docker inspect`` map it to a container).
    """
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
    ours = _own_mount_namespace()
    try:
        theirs = os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return exe
    if ours and theirs != ours:
        return f"{exe} (in mount namespace {theirs})"
    return exe


@functools.cache
def _own_mount_namespace() -> str:
    """The agent's mount namespace (it never changes it): read once, "" if unknown."""
    try:
        return os.readlink("/proc/self/ns/mnt")
    except OSError:
        return ""


def process_chain(pid: int, depth: int = 8) -> list[str]:
    """Command names from the peer up its parents: ``["ssh", "git", "zsh"]``.

    Shown to people approving a signature ("ssh ← git ← zsh"), as ssh-tpm-agent does.
    """
    chain: list[str] = []
    while pid > 1 and len(chain) < depth:
        name = _read_comm(pid)
        if not name:
            break
        chain.append(name)
        pid = _parent_pid(pid)
    return chain
