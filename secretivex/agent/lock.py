"""``ssh-add -x`` / ``-X``: lock the agent behind a passphrase, as OpenSSH does.

The passphrase is kept only as a bcrypt_pbkdf hash with a random salt. Unlock attempts
are serialized through one lock for the whole agent, and a failed attempt holds that
lock for a delay that grows with each failure (0.1 s per failure, capped at 10 s), as
OpenSSH's single-threaded agent sleeps after a failure: opening more connections does
not buy more guesses. Only unlock attempts wait; every other request carries on.
"""

from __future__ import annotations

import hmac
import secrets

import anyio
import bcrypt

_ROUNDS = 1  # OpenSSH's LOCK_ROUNDS; bcrypt_pbkdf is deliberately expensive per round.
_FAIL_DELAY_STEP_S = 0.1
_MAX_FAIL_DELAY_S = 10.0
_MAX_FAILURES = 100


class EmptyPassphrase(ValueError):
    """OpenSSH refuses an empty lock password; so do we (a lock anyone can open)."""


def _hash(passphrase: bytes, salt: bytes) -> bytes:
    return bcrypt.kdf(
        passphrase, salt, desired_key_bytes=32, rounds=_ROUNDS, ignore_few_rounds=True
    )


class AgentLock:
    def __init__(self) -> None:
        self._salt = b""
        self._hash: bytes | None = None
        self._failures = 0
        #: One unlock attempt at a time, agent-wide; a failure's delay is served holding it.
        self._attempts = anyio.Lock()
        #: One worker thread for the bcrypt hashes (they are deliberately slow).
        self._limiter = anyio.CapacityLimiter(1)

    @property
    def locked(self) -> bool:
        return self._hash is not None

    @property
    def failures(self) -> int:
        return self._failures

    async def lock(self, passphrase: bytes) -> bool:
        if not passphrase:
            raise EmptyPassphrase("empty lock passphrase is not supported")
        if self.locked:
            return False
        salt = secrets.token_bytes(16)
        digest = await anyio.to_thread.run_sync(_hash, passphrase, salt, limiter=self._limiter)
        if self.locked:  # another connection locked it meanwhile
            return False
        self._salt, self._hash, self._failures = salt, digest, 0
        return True

    async def unlock(self, passphrase: bytes) -> bool:
        if not passphrase:
            return False  # never a valid passphrase (OpenSSH: "empty password not supported")
        async with self._attempts:
            if self._hash is None:
                return False
            expected = self._hash
            digest = await anyio.to_thread.run_sync(
                _hash, passphrase, self._salt, limiter=self._limiter
            )
            if self._hash is expected and hmac.compare_digest(digest, expected):
                self._hash, self._failures = None, 0
                return True
            self._failures = min(self._failures + 1, _MAX_FAILURES)
            await anyio.sleep(min(_FAIL_DELAY_STEP_S * self._failures, _MAX_FAIL_DELAY_S))
            return False
