"""Hold many idle connections open (to measure an agent's per-connection memory)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from secretivex.protocol import RequestIdentities, encode_request, frame

__all__ = ["hold_idle_connections"]


def hold_idle_connections(
    path: str,
    connections: int,
    hold_s: float,
    connect_timeout_s: float = 5.0,
    on_ready: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Open ``connections`` sockets, make each one list keys once (so the agent has really
    accepted and served it), keep them all open for ``hold_s`` seconds, then close them.
    Returns counts and timings; never raises for a refused connection.
    """
    opened: list[socket.socket] = []
    failures = 0
    request = frame(encode_request(RequestIdentities()))
    started = time.monotonic()
    try:
        for _ in range(connections):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout_s)
            try:
                sock.connect(path)
                sock.sendall(request)
                header = sock.recv(5)
                if len(header) < 5:
                    raise OSError("short answer")
                remaining = int.from_bytes(header[:4], "big") - 1
                while remaining > 0:
                    chunk = sock.recv(min(remaining, 65536))
                    if not chunk:
                        raise OSError("closed")
                    remaining -= len(chunk)
            except OSError:
                failures += 1
                sock.close()
                continue
            opened.append(sock)
        ready_s = time.monotonic() - started
        if on_ready is not None:
            on_ready()
        time.sleep(max(hold_s, 0.0))
        still_open = 0
        for sock in opened:
            sock.setblocking(False)
            try:
                still_open += 0 if sock.recv(1) == b"" else 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                pass
    finally:
        for sock in opened:
            sock.close()
    return {
        "requested": connections,
        "opened": len(opened),
        "failed": failures,
        "still_open_after_hold": still_open,
        "open_s": round(ready_s, 3),
        "hold_s": hold_s,
    }
