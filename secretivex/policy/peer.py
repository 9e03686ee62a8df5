"""Who is on the other end of a Unix socket: SO_PEERCRED plus provenance from /proc."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """A client's SO_PEERCRED: process, user and group ids."""

    pid: int
    uid: int
    gid: int
    #: Lazily filled by ``provenance()``; empty when /proc is not readable.
    exe: str = field(default="", compare=False)


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Kernel-verified pid/uid/gid of the connecting process (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


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
    try:
        return os.readlink(f"/proc/{pid}/exe")
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
