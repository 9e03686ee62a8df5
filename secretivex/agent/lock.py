"""``ssh-add -x`` / ``-X``: lock the agent behind a passphrase, as OpenSSH does.

The passphrase is kept only as a bcrypt_pbkdf hash with a random salt. Unlock attempts
are serialized through one lock for the whole agent, and a failed attempt holds that
lock for a delay that grows with each failure (0.1 s per failure, capped at 10 s), as
OpenSSH's single-threaded agent sleeps after a failure: opening more connections does
not buy more guesses. Only unlock attempts wait; every other request carries on.

At most ``MAX_WAITING`` attempts wait in line; more are refused unchecked (``UnlockBusy``)
after a short pause, so a flood of connections can neither buy guesses nor build a queue
that keeps the owner's own ``ssh-add -X`` waiting behind minutes of penalties.
"""

from __future__ import annotations

import os

import anyio

_ROUNDS = 1  # OpenSSH's LOCK_ROUNDS; bcrypt_pbkdf is deliberately expensive per round.
_FAIL_DELAY_STEP_S = 0.1
_MAX_FAIL_DELAY_S = 10.0
_MAX_FAILURES = 100
MAX_WAITING = 4
_BUSY_PAUSE_MAX_S = 1.0


class UnlockBusy(Exception):
    """Too many unlock attempts already wait; this one was refused without a check."""


class EmptyPassphrase(ValueError):
    """OpenSSH refuses an empty lock password; so do we (a lock anyone can open)."""


def _same(a: bytes, b: bytes) -> bool:
    """Constant-time comparison. ``hmac`` (and with it the system OpenSSL's digests,
    ~0.5 MiB) is imported by ``_hash`` in its worker thread, not at start."""
    import hmac

    return hmac.compare_digest(a, b)


def _hash(passphrase: bytes, salt: bytes) -> bytes:
    # On the first lock, in the worker thread: not in an agent that is never locked.
    import hmac  # noqa: F401 - for _same, which compares on the event loop

    import bcrypt

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
        self._waiting = 0

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
        salt = os.urandom(16)
        digest = await anyio.to_thread.run_sync(_hash, passphrase, salt, limiter=self._limiter)
        if self.locked:  # another connection locked it meanwhile
            return False
        self._salt, self._hash, self._failures = salt, digest, 0
        return True

    def _delay(self) -> float:
        return min(_FAIL_DELAY_STEP_S * self._failures, _MAX_FAIL_DELAY_S)

    async def unlock(self, passphrase: bytes) -> bool:
        """True when unlocked; False for a wrong passphrase (after the agent-wide delay).

        Raises ``UnlockBusy`` when ``MAX_WAITING`` attempts are already in line."""
        if not passphrase:
            return False  # never a valid passphrase (OpenSSH: "empty password not supported")
        if self._waiting >= MAX_WAITING:
            await anyio.sleep(min(self._delay(), _BUSY_PAUSE_MAX_S))
            raise UnlockBusy("too many unlock attempts in progress")
        self._waiting += 1
        try:
            return await self._attempt(passphrase)
        finally:
            self._waiting -= 1

    async def _attempt(self, passphrase: bytes) -> bool:
        async with self._attempts:
            if self._hash is None:
                return False
            expected = self._hash
            digest = await anyio.to_thread.run_sync(
                _hash, passphrase, self._salt, limiter=self._limiter
            )
            if self._hash is expected and _same(digest, expected):
                self._hash, self._failures = None, 0
                return True
            self._failures = min(self._failures + 1, _MAX_FAILURES)
            await anyio.sleep(self._delay())
            return False
