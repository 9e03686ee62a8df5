"""The contract every key store meets, and the small value types they share.

A store owns keys; the registry (``stores/registry.py``) merges the listings of all
stores in configured order and routes each sign request to the store owning the blob.
"""

from __future__ import annotations

import abc
import hashlib
import time
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class StoreError(Exception):
    """A store could not do what was asked; the message is safe to log (no secrets)."""


class SignError(StoreError):
    """Signing failed (unknown key, token fault, unsupported flags)."""


class StoreState(str, Enum):
    OK = "ok"
    DEGRADED = "degraded"
    STOPPED = "stopped"


def fingerprint_sha256(blob: bytes) -> str:
    """``SHA256:<base64 without padding>`` exactly as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class Identity:
    """One key as clients see it: the public blob (a key or a certificate) and a comment.

    ``confirm`` marks keys added with ``ssh-add -c``; ``constraints`` carries protocol
    extension constraints (e.g. destination restrictions) the policy layer enforces.
    ``origin`` names the scoped socket an ``ssh-add``ed key came through ("" = the main
    socket or a configured store): such a key is never shown on any other listener.
    """

    blob: bytes
    comment: str
    store: str = ""
    confirm: bool = False
    constraints: tuple[Any, ...] = ()
    origin: str = ""
    fingerprint: str = field(default="", compare=False)
    key_type: str = field(default="", compare=False)

    def __repr__(self) -> str:
        # The fingerprint says which key; the raw blob (hundreds of bytes) says nothing.
        extra = " confirm" if self.confirm else ""
        return (
            f"Identity({self.key_type} {self.fingerprint} {self.comment!r} "
            f"store={self.store!r}{extra})"
        )

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", fingerprint_sha256(self.blob))
        if not self.key_type:
            object.__setattr__(self, "key_type", _blob_type(self.blob))


def _blob_type(blob: bytes) -> str:
    if len(blob) < 4:
        return ""
    n = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + n].decode("ascii", "replace")


@dataclass(slots=True)
class StoreHealth:
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

    def local_key(self, blob: bytes) -> Any:
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
