"""Keys of another agent (the user's OpenSSH agent, a forwarded agent), proxied.

Its keys pass through secretivex's scopes and policy, which turns secretivex into a
filtering proxy: "forward only these two keys into this container". The upstream may
come and go: failures are failure replies, never a crash, and the next request
reconnects.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from secretivex.client import AgentClient, AgentError, AgentFailure
from secretivex.stores.base import Identity, KeyStore, SignError, StoreHealth, StoreState

log = logging.getLogger(__name__)

_POOL_SIZE = 4


class UpstreamStore(KeyStore):
    kind = "upstream"
    #: Listings change behind our back (ssh-add on the upstream): re-read them.
    dynamic = True

    def __init__(
        self,
        name: str,
        socket_path: str | os.PathLike[str],
        *,
        timeout_ms: int = 5000,
        cache_ms: int = 1000,
    ) -> None:
        super().__init__(name)
        self.socket_path = Path(os.path.expanduser(str(socket_path)))
        self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self.cache_s = cache_ms / 1000
        self._idle: list[AgentClient] = []
        self._slots = anyio.Semaphore(_POOL_SIZE)
        self._listing: tuple[Identity, ...] = ()
        self._listed_at = -1e9
        self._refresh_lock = anyio.Lock()
        self._state = StoreState.OK
        self._last_error: str | None = None

    @classmethod
    def from_config(cls, cfg: Any, *, name: str) -> UpstreamStore:
        return cls(name, cfg.socket, timeout_ms=cfg.timeout_ms)

    async def _call(self, method: str, *args: Any) -> Any:
        """One request on a pooled connection; a broken connection is replaced once."""
        async with self._slots:
            for attempt in (1, 2):
                client = self._idle.pop() if self._idle else None
                try:
                    if client is None:
                        client = await AgentClient.connect(
                            self.socket_path,
                            timeout=self.timeout_s,
                            response_timeout=self.timeout_s,
                        )
                    result = await getattr(client, method)(*args)
                except AgentFailure:
                    if client is not None:
                        self._idle.append(client)
                    raise
                except AgentError:
                    if client is not None:
                        await client.aclose()
                    if attempt == 2:
                        raise
                    continue
                self._idle.append(client)
                return result
        raise AssertionError("unreachable")

    def _degrade(self, reason: str) -> None:
        if self._state is not StoreState.DEGRADED or self._last_error != reason:
            log.warning(
                "store %s: upstream %s unavailable: %s", self.name, self.socket_path, reason
            )
        self._state = StoreState.DEGRADED
        self._last_error = reason
        if self._listing:
            self._listing = ()
            self._changed()

    async def identities(self) -> Sequence[Identity]:
        if time.monotonic() - self._listed_at < self.cache_s:
            return self._listing
        async with self._refresh_lock:
            if time.monotonic() - self._listed_at < self.cache_s:
                return self._listing
            try:
                keys = await self._call("list_identities")
            except AgentError as exc:
                self._listed_at = time.monotonic()
                self._degrade(str(exc))
                return self._listing
            if self._state is StoreState.DEGRADED:
                log.info("store %s: upstream %s is back", self.name, self.socket_path)
            self._state, self._last_error = StoreState.OK, None
            listing = tuple(Identity(blob=k.blob, comment=k.comment, store=self.name) for k in keys)
            self._listed_at = time.monotonic()
            if listing != self._listing:
                self._listing = listing
                self._changed()
        return self._listing

    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        try:
            signature: bytes = await self._call("sign", blob, data, flags)
        except AgentFailure:
            raise SignError("upstream agent refused to sign") from None
        except AgentError as exc:
            self._degrade(str(exc))
            raise SignError(f"upstream agent unavailable: {exc}") from None
        return signature

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await client.aclose()
        self._listing = ()
        self._listed_at = -1e9
        self._changed()

    async def reload(self) -> None:
        await self.aclose()

    def health(self) -> StoreHealth:
        return StoreHealth(
            self.name,
            self.kind,
            self._state,
            len(self._listing),
            self._last_error,
            detail={"socket": str(self.socket_path)},
        )
