"""The vocabulary every layer shares: an identity, its fingerprint and its type name.

It lives at the bottom (``keys``) so that stores, policy, the client and the agent can
all speak of keys without importing each other.
"""

from __future__ import annotations

from base64 import b64encode
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.hashes import SHA256, Hash

__all__ = ["Identity", "SigningError", "blob_type", "fingerprint_sha256"]


class SigningError(Exception):
    """A key could not produce a signature; the message is safe to log (no key bytes).

    Stores turn it into their own ``SignError`` so callers of a store see one error type.
    """


def fingerprint_sha256(blob: bytes) -> str:
    """``SHA256:<base64 without padding>`` exactly as ``ssh-keygen -l`` prints it.

    Hashed with cryptography (its OpenSSL is loaded for the keys anyway), not
    ``hashlib``: importing ``_hashlib`` sets up the system OpenSSL's digests, about
    0.5 MiB of RSS that the agent would keep for this one hash."""
    h = Hash(_SHA256)
    h.update(blob)
    digest = h.finalize()
    return "SHA256:" + b64encode(digest).decode("ascii").rstrip("=")


_SHA256 = SHA256()


def blob_type(blob: bytes) -> str:
    """The key type named at the start of a blob, or "" when the blob is too short.

    Lenient on purpose (listings, logs, reprs); ``blob_key_type`` is the strict parser.
    """
    if len(blob) < 4:
        return ""
    size = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + size].decode("ascii", "replace")


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
            object.__setattr__(self, "key_type", blob_type(self.blob))
