"""Keys added at run time with ``ssh-add``: held only in memory, optionally expiring.

Every entry remembers the socket it was added through (its *origin*): a key added
through a scoped listener belongs to that listener, and the listener layer uses the
origin to keep it out of every other listener (``ListenerSpec.sees``). The store is
bounded by count, by bytes, and by what one identities answer can carry, so no client
can grow the agent without limit or make every listing fail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from secretivex.keys import SoftwareKey
from secretivex.protocol import MAX_MESSAGE_SIZE, DestinationConstraints
from secretivex.stores.base import (
    Identity,
    KeyStore,
    SignError,
    StoreError,
    StoreHealth,
    StoreState,
    sign_locally,
)

log = logging.getLogger(__name__)

#: Origin of keys added through the main socket: the owner's, unscoped.
MAIN_ORIGIN = ""
DEFAULT_MAX_KEYS = 1000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Bytes the memory store's own entries may take in one identities answer (frame
#: minus type and count), so its listing alone always fits in a frame.
LISTING_BUDGET = MAX_MESSAGE_SIZE - 5
#: A refused add is logged at WARNING at most once per window (a burst is one line).
FULL_WARNING_INTERVAL_S = 10.0


class StoreFull(StoreError):
    """The memory store is at one of its bounds; the message names which."""


class OriginConflict(StoreError):
    """The key is already held for another socket's scope and may not be taken over."""


@dataclass(slots=True)
class _Entry:
    """One added key, its identity, its expiry and its accounted size."""

    key: SoftwareKey
    identity: Identity
    expires_at: float | None  # time.monotonic() deadline
    size: int  # accounted bytes (key material, blobs, comment, constraints)
    listing_size: int  # bytes this key takes in an identities answer
    lapses: bool = False  # when it expires, withhold the key everywhere (see ``lapsed``)


def _constraint_bytes(constraints: tuple[Any, ...]) -> int:
    total = 0
    for ext in constraints:
        if isinstance(ext, DestinationConstraints):
            for c in ext.constraints:
                for hop in (c.from_hop, c.to_hop):
                    total += 64 + len(hop.user) + len(hop.hostname)
                    total += sum(32 + len(k.blob) for k in hop.keys)
    return total


def _entry_bytes(key: SoftwareKey, comment_len: int, constraints: tuple[Any, ...]) -> int:
    """What an entry costs: public blobs, an estimate of the private material (RSA keeps
    about 4.5 moduli), the comment and any destination constraints."""
    private = key.bits * 5 // 8 if key.key_type.startswith(("ssh-rsa", "rsa")) else 128
    certificate = len(key.public_blob) if key.public_blob is not key.plain_public_blob else 0
    return (
        256
        + len(key.plain_public_blob)
        + certificate
        + private
        + comment_len
        + (_constraint_bytes(constraints))
    )


class MemoryStore(KeyStore):
    """The store ``ssh-add`` talks to; ``ssh-add -D`` clears it and only it."""

    kind = "memory"

    def __init__(
        self,
        name: str = "memory",
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(name)
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._entries: dict[bytes, _Entry] = {}
        self._listing: tuple[Identity, ...] = ()
        self._has_lifetimes = False
        self._wakeup = anyio.Event()
        self._bytes = 0
        self._listing_bytes = 0
        self._refused = 0
        self._refused_warned_at = -math.inf
        #: Keys whose ``ssh-add -t`` lifetime (given through the main socket) ran out.
        #: OpenSSH forgets such a key; here a configured store may serve the same key,
        #: so the registry withholds these blobs from every store until they are added
        #: again: the lifetime the owner asked for holds.
        self.lapsed: set[bytes] = set()

    def add(
        self,
        key: SoftwareKey,
        comment: str,
        *,
        lifetime_s: int | None = None,
        confirm: bool = False,
        constraints: tuple[Any, ...] = (),
        origin: str = MAIN_ORIGIN,
        lapses: bool = False,
    ) -> Identity:
        """Add or replace a key (re-adding updates comment and constraints, as OpenSSH).

        ``origin`` is the socket the key came through (``MAIN_ORIGIN`` for the main
        socket). A scoped socket may replace only keys it added itself; the main socket
        may replace any key, which then becomes the owner's (unscoped). ``lapses``: when
        ``lifetime_s`` runs out the blob goes into ``lapsed`` (an explicit ``ssh-add
        -t`` through the main socket). Raises ``OriginConflict`` or ``StoreFull``
        (nothing changes then).
        """
        blob = key.public_blob
        existing = self._entries.get(blob)
        if existing is not None and origin != MAIN_ORIGIN and existing.identity.origin != origin:
            raise OriginConflict("key already added through another socket")
        raw_comment = comment.encode("utf-8", "surrogateescape")
        size = _entry_bytes(key, len(raw_comment), constraints)
        listing_size = 8 + len(blob) + len(raw_comment)
        self._check_room(existing, size, listing_size)
        identity = Identity(
            blob=blob,
            comment=comment,
            store=self.name,
            confirm=confirm,
            constraints=constraints,
            key_type=key.key_type,
            origin=origin,
        )
        # A lifetime of 0 has run out already (OpenSSH: death = now): the key is
        # replaced, then expires on the next look, as ssh-agent's reaper drops it.
        expires = time.monotonic() + lifetime_s if lifetime_s is not None else None
        if existing is not None:
            # Replaced in place: the key keeps its position in listings (as OpenSSH).
            self._bytes -= existing.size
            self._listing_bytes -= existing.listing_size
        lapses = lapses and expires is not None and origin == MAIN_ORIGIN
        self._entries[blob] = _Entry(key, identity, expires, size, listing_size, lapses)
        if origin == MAIN_ORIGIN:
            self.lapsed.discard(blob)  # the owner added it again: served again
        self._bytes += size
        self._listing_bytes += listing_size
        self._rebuild()
        if expires is not None:
            self._wakeup.set()
        return identity

    def _check_room(self, existing: _Entry | None, size: int, listing_size: int) -> None:
        count = len(self._entries) + (0 if existing else 1)
        total = self._bytes - (existing.size if existing else 0) + size
        listing = self._listing_bytes - (existing.listing_size if existing else 0) + listing_size
        reason = ""
        if count > self.max_keys:
            reason = f"memory store holds its maximum of {self.max_keys} keys"
        elif total > self.max_bytes:
            reason = f"memory store would exceed its maximum of {self.max_bytes} bytes"
        elif listing > LISTING_BUDGET:
            reason = "memory store's keys would no longer fit in one identities answer"
        if not reason:
            return
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_warned_at >= FULL_WARNING_INTERVAL_S:
            log.warning(
                "refusing ssh-add: %s (%d adds refused since the last warning; "
                "agent.max_added_keys / agent.max_added_bytes set the bounds)",
                reason,
                self._refused,
            )
            self._refused_warned_at = now
            self._refused = 0
        raise StoreFull(reason)

    def _forget(self, blob: bytes) -> _Entry | None:
        entry = self._entries.pop(blob, None)
        if entry is not None:
            self._bytes -= entry.size
            self._listing_bytes -= entry.listing_size
        return entry

    def remove(self, blob: bytes, *, origin: str | None = None) -> bool:
        """Remove one key; with ``origin`` only if it was added through that socket."""
        entry = self._entries.get(blob)
        if entry is None or (origin is not None and entry.identity.origin != origin):
            return False
        self._forget(blob)
        self._rebuild()
        return True

    def clear(self, *, origin: str | None = None) -> int:
        """Remove every key, or with ``origin`` only the keys added through that socket."""
        if origin is None:
            count = len(self._entries)
            self._entries.clear()
            self._bytes = self._listing_bytes = 0
        else:
            mine = [b for b, e in self._entries.items() if e.identity.origin == origin]
            for blob in mine:
                self._forget(blob)
            count = len(mine)
        self._rebuild()
        return count

    def _rebuild(self) -> None:
        self._listing = tuple(e.identity for e in self._entries.values())
        self._has_lifetimes = any(e.expires_at is not None for e in self._entries.values())
        self._changed()

    def _expire(self) -> float | None:
        """Drop expired keys; return seconds until the next expiry (None: none pending)."""
        now = time.monotonic()
        expired = [
            b for b, e in self._entries.items() if e.expires_at is not None and e.expires_at <= now
        ]
        for blob in expired:
            entry = self._forget(blob)
            if entry is not None:
                log.info("key expired: %s %s", entry.identity.fingerprint, entry.identity.comment)
                if entry.lapses:
                    self.lapsed.add(blob)
        if expired:
            self._rebuild()
        pending = [e.expires_at for e in self._entries.values() if e.expires_at is not None]
        return max(0.0, min(pending) - now) if pending else None

    async def maintain(self) -> None:
        while True:
            delay = self._expire()
            self._wakeup = anyio.Event()
            with anyio.move_on_after(math.inf if delay is None else delay + 0.01):
                await self._wakeup.wait()

    async def aclose(self) -> None:
        self.clear()

    async def reload(self) -> None:
        """Keys added by clients survive a config reload."""

    def expiring(self) -> bool:
        """True while any key has a lifetime (listings must then re-check expiry)."""
        return self._has_lifetimes

    async def identities(self) -> Sequence[Identity]:
        if self._has_lifetimes:
            self._expire()
        return self._listing

    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        entry = self._entries.get(blob)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= time.monotonic()):
            raise SignError("key not in memory store")
        return sign_locally(entry.key, data, flags)

    def local_key(self, blob: bytes) -> SoftwareKey | None:
        entry = self._entries.get(blob)
        return entry.key if entry else None

    def health(self) -> StoreHealth:
        return StoreHealth(
            self.name,
            self.kind,
            StoreState.OK,
            len(self._entries),
            detail={
                "bytes": self._bytes,
                "max_keys": self.max_keys,
                "max_bytes": self.max_bytes,
            },
        )
