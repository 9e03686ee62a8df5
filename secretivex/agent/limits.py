"""What one peer may hold: connection slots (global, per listener, per uid, with
headroom kept for the agent's own uid) and bytes of unfinished frames (one budget for
all connections, plus a deadline to finish a frame once it started).

Pure bookkeeping on the event-loop thread: no I/O, no locks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

#: Refusal reasons, as counted in metrics (``connections.rejected``) and logged.
MAX_CONNECTIONS = "max_connections"
OWNER_RESERVE = "owner_reserve"
PER_UID = "max_connections_per_uid"
PER_LISTENER = "listener_max_connections"

_K = TypeVar("_K")

#: Bytes of an unfinished frame each connection may hold outside the shared budget.
FREE_BYTES_PER_CONNECTION = 8 * 1024


def _charged(pending: int) -> int:
    return max(0, pending - FREE_BYTES_PER_CONNECTION)


class Listener(Protocol):
    path: Path
    max_connections: int | None

    @property
    def is_main(self) -> bool: ...


class LimitSettings(Protocol):
    """The ``agent.*`` values the limits derive from."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_uid(self) -> int | None: ...
    @property
    def reserved_connections(self) -> int: ...
    @property
    def max_buffered_bytes(self) -> int: ...
    @property
    def frame_timeout_ms(self) -> int: ...


@dataclass(frozen=True)
class ConnectionLimits:
    """Effective limits (config already resolved: no "null = derived" left here)."""

    max_connections: int = 1024
    #: Most connections one uid other than the agent's own may hold, all sockets.
    max_per_uid: int = 256
    #: Slots of ``max_connections`` that only the agent's own uid may take.
    reserved_for_owner: int = 16
    #: Bytes of unfinished frames buffered across all connections.
    max_buffered_bytes: int = 16 * 1024 * 1024
    #: Seconds to finish a frame once its first byte arrived; None = no deadline.
    frame_timeout_s: float | None = 10.0

    @classmethod
    def from_config(cls, agent: LimitSettings) -> ConnectionLimits:
        """Resolve the ``agent.*`` limits (``AgentSettings`` or the config model)."""
        max_conn = agent.max_connections
        per_uid = agent.max_connections_per_uid
        frame_ms = agent.frame_timeout_ms
        return cls(
            max_connections=max_conn,
            max_per_uid=max(1, max_conn // 4) if per_uid is None else per_uid,
            reserved_for_owner=min(agent.reserved_connections, max_conn // 2),
            max_buffered_bytes=agent.max_buffered_bytes,
            frame_timeout_s=frame_ms / 1000 if frame_ms else None,
        )


class ConnectionTracker:
    """Live connections by listener and uid, the shared frame-byte budget, and the
    connections shutdown drains."""

    def __init__(self, limits: ConnectionLimits | int, owner_uid: int | None = None) -> None:
        if isinstance(limits, int):  # just a global limit: the rest derived as from config
            limits = ConnectionLimits(
                max_connections=limits,
                max_per_uid=max(1, limits // 4),
                reserved_for_owner=min(ConnectionLimits.reserved_for_owner, limits // 2),
            )
        self.limits = limits
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.active = 0
        self.by_uid: dict[int, int] = {}
        self.by_listener: dict[Path, int] = {}
        #: Bytes currently held in unfinished frames, all connections together.
        self.buffered = 0
        #: Bytes of frame buffers released since the heap was last trimmed.
        self.released = 0
        self.next_id = 0
        self.draining = False
        #: Every admitted connection (``drain()`` closes it once its request is answered).
        self.connections: set[_Drainable] = set()

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    def refusal(self, listener: Listener, uid: int) -> str | None:
        """Why a new connection from ``uid`` on ``listener`` must be refused, or None."""
        limits = self.limits
        if self.active >= limits.max_connections:
            return MAX_CONNECTIONS
        # The owner's headroom is for the owner's main socket. The agent's uid on a
        # listener (root in a container when the agent runs as root) is one more peer
        # of that listener: it must not take the reserve, nor go past the per-uid cap.
        if uid != self.owner_uid or not listener.is_main:
            if self.active >= limits.max_connections - limits.reserved_for_owner:
                return OWNER_RESERVE
            if self.by_uid.get(uid, 0) >= limits.max_per_uid:
                return PER_UID
        cap = listener.max_connections
        if cap is not None and self.by_listener.get(listener.path, 0) >= cap:
            return PER_LISTENER
        return None

    def open(self, listener: Listener, uid: int) -> None:
        self.active += 1
        self.by_uid[uid] = self.by_uid.get(uid, 0) + 1
        self.by_listener[listener.path] = self.by_listener.get(listener.path, 0) + 1

    def close(self, listener: Listener, uid: int) -> None:
        self.active -= 1
        _decrement(self.by_uid, uid)
        _decrement(self.by_listener, listener.path)

    def hold_bytes(self, held: int, wanted: int) -> bool:
        """Move one connection's unfinished frame from ``held`` to ``wanted`` bytes;
        False (nothing changed) when that would pass the budget.

        The first ``FREE_BYTES_PER_CONNECTION`` of each connection are not charged, so
        a full budget never refuses small requests (every list and sign, typical adds)
        and a flood of big frames cannot lock out ordinary clients."""
        grow = _charged(wanted) - _charged(held)
        if grow > 0 and self.buffered + grow > self.limits.max_buffered_bytes:
            return False
        self.buffered += grow
        if wanted < held:
            self.released += held - wanted
        return True

    def recheck(self, listeners: frozenset[Path]) -> None:
        """After a reload changed who ``listeners`` admit (or stopped them): their
        connections close unless still admitted."""
        if listeners:
            for connection in list(self.connections):
                connection.recheck(listeners)

    def drain(self) -> None:
        """Stop reading new requests; requests already being handled finish."""
        self.draining = True
        for connection in list(self.connections):
            connection.drain()


class _Drainable(Protocol):
    def drain(self) -> None: ...
    def recheck(self, listeners: frozenset[Path]) -> None: ...


def _decrement(counts: dict[_K, int], key: _K) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
