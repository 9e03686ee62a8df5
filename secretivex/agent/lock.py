"""``ssh-add -x`` / ``-X``: lock the agent behind a passphrase, as OpenSSH does.

The passphrase is kept only as a bcrypt_pbkdf hash with a random salt; failed unlocks
wait longer each time (0.1 s per failure, capped), per connection, so a guessing
client slows itself down without blocking anyone else.
"""

from __future__ import annotations

import hmac
import secrets

import anyio
import bcrypt

_ROUNDS = 1  # OpenSSH's LOCK_ROUNDS; bcrypt_pbkdf is deliberately expensive per round.
_MAX_FAIL_DELAY_S = 10.0


def _hash(passphrase: bytes, salt: bytes) -> bytes:
    return bcrypt.kdf(
        passphrase, salt, desired_key_bytes=32, rounds=_ROUNDS, ignore_few_rounds=True
    )


class AgentLock:
    def __init__(self) -> None:
        self._salt = b""
        self._hash: bytes | None = None
        self._failures = 0

    @property
    def locked(self) -> bool:
        return self._hash is not None

    async def lock(self, passphrase: bytes) -> bool:
        if self.locked:
            return False
        salt = secrets.token_bytes(16)
        digest = await anyio.to_thread.run_sync(_hash, passphrase, salt)
        self._salt, self._hash, self._failures = salt, digest, 0
        return True

    async def unlock(self, passphrase: bytes) -> bool:
        if self._hash is None:
            return False
        expected = self._hash
        digest = await anyio.to_thread.run_sync(_hash, passphrase, self._salt)
        if self._hash is expected and hmac.compare_digest(digest, expected):
            self._hash, self._failures = None, 0
            return True
        self._failures = min(self._failures + 1, 100)
        await anyio.sleep(min(0.1 * self._failures, _MAX_FAIL_DELAY_S))
        return False
