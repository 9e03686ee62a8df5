"""Keys added at run time with ``ssh-add``: held only in memory, optionally expiring."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from secretivex.keys import SoftwareKey
from secretivex.stores.base import Identity, KeyStore, SignError, StoreHealth, StoreState

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    key: SoftwareKey
    identity: Identity
    expires_at: float | None  # time.monotonic() deadline


class MemoryStore(KeyStore):
    """The store ``ssh-add`` talks to; ``ssh-add -D`` clears it and only it."""

    kind = "memory"

    def __init__(self, name: str = "memory") -> None:
        super().__init__(name)
        self._entries: dict[bytes, _Entry] = {}
        self._listing: tuple[Identity, ...] = ()
        self._has_lifetimes = False
        self._wakeup = anyio.Event()

    def add(
        self,
        key: SoftwareKey,
        comment: str,
        *,
        lifetime_s: int | None = None,
        confirm: bool = False,
        constraints: tuple[Any, ...] = (),
    ) -> Identity:
        """Add or replace a key (re-adding updates comment and constraints, as OpenSSH)."""
        identity = Identity(
            blob=key.public_blob,
            comment=comment,
            store=self.name,
            confirm=confirm,
            constraints=constraints,
            key_type=key.key_type,
        )
        expires = time.monotonic() + lifetime_s if lifetime_s else None
        self._entries.pop(key.public_blob, None)
        self._entries[key.public_blob] = _Entry(key, identity, expires)
        self._rebuild()
        if expires is not None:
            self._wakeup.set()
        return identity

    def remove(self, blob: bytes) -> bool:
        if self._entries.pop(blob, None) is None:
            return False
        self._rebuild()
        return True

    def clear(self) -> int:
        count = len(self._entries)
        self._entries.clear()
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
            entry = self._entries.pop(blob)
            log.info("key expired: %s %s", entry.identity.fingerprint, entry.identity.comment)
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
        return entry.key.sign(data, flags)

    def local_key(self, blob: bytes) -> SoftwareKey | None:
        entry = self._entries.get(blob)
        return entry.key if entry else None

    def health(self) -> StoreHealth:
        return StoreHealth(self.name, self.kind, StoreState.OK, len(self._entries))
