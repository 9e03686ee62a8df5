"""Where a software key signs: inline on the event loop, or in the bounded signing pool.

``cryptography`` releases the GIL while it signs, so a pool of threads sized to the
CPUs lets slow signatures use every core while the event loop keeps answering other
clients. A thread hop costs tens of microseconds, more than an Ed25519 or P-256
signature itself: those stay inline. Measured per algorithm with
``secretivex bench ceiling`` (16 anyio tasks, pool throughput / inline throughput, same
run, alternating rounds; numbers in docs/performance.md):

* Ed25519, P-256: the pool loses (hop > signature): inline;
* P-384, P-521, RSA (2048-4096): the pool wins (up to 2x on two cores, and an RSA
  signature no longer stalls every other client for milliseconds): pool.

A key's own ``sign_inline = False`` (RSA keys above 4096 bits, keys added with ssh-add
whose primes were not checked) always sends it to the pool: one mechanism, one pool
(``Limits.sign_threads``).
"""

from __future__ import annotations

import os
from typing import Final, Protocol

__all__ = [
    "INLINE_KEY_TYPES",
    "pool_size",
    "signs_in_pool_by_name",
    "signs_inline",
]

#: Key types signed on the event loop; every other software key signs in the pool.
INLINE_KEY_TYPES: Final = frozenset({"ssh-ed25519", "ecdsa-sha2-nistp256"})

#: ``secretivex bench ceiling`` algorithm names -> SSH key types (for its table).
_BENCH_NAMES: Final = {
    "ed25519": "ssh-ed25519",
    "ecdsa-p256": "ecdsa-sha2-nistp256",
    "ecdsa-p384": "ecdsa-sha2-nistp384",
    "ecdsa-p521": "ecdsa-sha2-nistp521",
    "rsa-2048": "ssh-rsa",
    "rsa-3072": "ssh-rsa",
    "rsa-4096": "ssh-rsa",
}


class _LocalKey(Protocol):
    plain_key_type: str


def signs_inline(key: _LocalKey) -> bool:
    """True when ``key`` signs on the event loop, False when it goes to the pool."""
    if not getattr(key, "sign_inline", True):
        return False
    return key.plain_key_type in INLINE_KEY_TYPES


def signs_in_pool_by_name(algorithm: str) -> bool:
    """The decision for a ``bench ceiling`` algorithm name (``rsa-3072``...)."""
    return _BENCH_NAMES.get(algorithm, algorithm) not in INLINE_KEY_TYPES


def pool_size() -> int:
    """Signing threads: one per CPU this process may run on (more only add contention)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(os.cpu_count() or 1, 1)
