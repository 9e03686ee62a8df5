"""What the kernel says about the process on the other end of a Unix socket.

One reader of ``SO_PEERCRED`` for everything that asks: the agent's peer check
(``policy.peer``), the upstream store's loop check (``client``), ``agent --kill``
(``cli.daemon``). Stdlib only, at the bottom of the layers.
"""

from __future__ import annotations

import socket
import struct

__all__ = ["peer_ids"]

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_ids(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected ``sock``, or for a client socket of
    the one that called ``listen()``. Raises ``OSError`` where the kernel does not say."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return pid, uid, gid
