"""The contract every key store meets, and the small value types they share.

A store owns keys; the registry (``stores/registry.py``) merges the listings of all
stores in configured order and routes each sign request to the store owning the blob.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# Re-exported: stores speak of identities; the definitions live in ``keys``.
from secretivex.keys.identity import Identity, SigningError, fingerprint_sha256
from secretivex.keys.software import SoftwareKey

__all__ = [
    "Identity",
    "KeyStore",
    "SignError",
    "StoreError",
    "StoreHealth",
    "StoreState",
    "fingerprint_sha256",
    "sign_locally",
]


class StoreError(Exception):
    """A store could not do what was asked; the message is safe to log (no secrets)."""


class SignError(StoreError):
    """Signing failed (unknown key, token fault, unsupported flags).

    Stores wrap the keys' own ``SigningError`` in it, so a store's caller catches one type.
    """


def sign_locally(key: SoftwareKey, data: bytes, flags: int) -> bytes:
    """Sign with an in-process key, as a store: the key's ``SigningError`` becomes ``SignError``."""
    try:
        return key.sign(data, flags)
    except SigningError as exc:
        raise SignError(str(exc)) from None


class StoreState(str, Enum):
    OK = "ok"
    DEGRADED = "degraded"
    STOPPED = "stopped"


@dataclass(slots=True)
class StoreHealth:
    """A store's state for the health document and metrics."""

    name: str
    kind: str
    state: StoreState
    keys: int
    last_error: str | None = None
    since_unix_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    detail: dict[str, Any] = field(default_factory=dict)


class KeyStore(abc.ABC):
    """A source of signing keys.

    ``identities`` is on the hot path of every listing: stores answer from memory and
    refresh in ``maintain``. ``sign`` may await (token threads, upstream agents).
    """

    kind: str = "abstract"
    #: Slow signs take one of the agent's ``max_signers`` slots. A store that bounds
    #: its own concurrency (an upstream agent that may hang) sets this False.
    shares_signer_slots: bool = True

    def __init__(self, name: str) -> None:
        self.name = name
        #: Bumped whenever the set of identities changes, so listings can be cached.
        self.version = 0

    def _changed(self) -> None:
        self.version += 1

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Load keys / open sessions. Raise ``StoreError`` only for fatal setup errors."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release sessions and forget key material."""

    async def maintain(self) -> None:  # noqa: B027 - optional hook
        """Long-running duty (expiry, retry with backoff); runs in the agent's task group."""

    async def reload(self) -> None:
        """Re-read the backing source (SIGHUP). Default: close and open again."""
        await self.aclose()
        await self.open()

    def local_key(self, blob: bytes) -> SoftwareKey | None:
        """An in-process key object with a sync ``sign(data, flags)``, if this store has one.

        Lets the dispatcher sign software keys inline without an await (the hot path).
        """
        return None

    @abc.abstractmethod
    async def identities(self) -> Sequence[Identity]:
        """Keys this store can sign with now, in a stable order."""

    @abc.abstractmethod
    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        """Return an SSH signature blob (``string alg, string sig``) or raise ``SignError``."""

    @abc.abstractmethod
    def health(self) -> StoreHealth:
        """Current state for ``client health`` and metrics; never includes secrets."""
