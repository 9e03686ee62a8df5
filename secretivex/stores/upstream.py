"""Keys of another agent (the user's OpenSSH agent, a forwarded agent), proxied.

Its keys pass through secretivex's scopes and policy, which turns secretivex into a
filtering proxy: "forward only these two keys into this container". The upstream may
come and go, hang or answer garbage, and none of that may reach other clients:

- the listing is refreshed in the background (``maintain``) and served from memory, so
  listings and signs of other stores never wait on the upstream;
- a refresh that times out or gets garbage keeps the last good listing, marked stale in
  health, until ``stale_expiry_ms`` after the last success; an upstream that is gone
  (socket missing, connection refused) has its keys withdrawn at once, since none of
  them could sign;
- a sign waits at most ``timeout_ms`` (queueing included) and is never retried after it
  was sent, except once on a fresh connection when a pooled one turns out to be dead;
- signs take this store's own ``max_signers`` slots, not the agent's;
- every signature the upstream answers is verified against the requested key (and,
  for RSA, the algorithm the flags asked for) before it is passed on; a mismatch is a
  failed sign, never another key's signature under this key's name in the audit log;
- every listed key is checked by the keys layer (``check_listed_blob``) before it is
  served: one malformed key (or a certificate whose signature does not verify) would
  make OpenSSH's clients reject the whole listing, every store's keys with it. Such
  keys are left out, counted in health (``rejected_keys``) and logged (rate-limited);
  comments are cleaned and capped (``listed_comment``);
- an upstream socket that leads back to this agent (a symlink or another alias of its
  own socket, which the config check by path cannot see) is caught at connect time by
  ``SO_PEERCRED``: the store is degraded with that reason and never sends it a request.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio

from secretivex.client import (
    AgentClient,
    AgentConnectionClosed,
    AgentError,
    AgentFailure,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
    can_verify,
    check_signature,
)
from secretivex.config.runtime import UpstreamStoreSettings
from secretivex.keys import KeyFormatError
from secretivex.keys.listed import check_listed_blob, listed_comment
from secretivex.stores.base import (
    Identity,
    KeyStore,
    SignError,
    StoreHealth,
    StoreState,
    fingerprint_sha256,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Rejected upstream keys are logged when their number changes, else at most this often.
REJECTED_WARNING_INTERVAL_S = 60.0
#: After finding that the upstream socket leads back to this agent, look again this late
#: (a symlink such as a forwarded ``SSH_AUTH_SOCK`` link may be re-pointed), not every
#: refresh: each look is a connection to ourselves.
LOOP_RETRY_S = 30.0


class UpstreamIsSelf(AgentUnavailable):
    """The upstream socket is this agent's own: every request would loop back into it."""


class UpstreamStore(KeyStore):
    kind = "upstream"
    #: Signs are bounded by this store's own semaphore (see the module docstring).
    shares_signer_slots = False

    def __init__(
        self,
        name: str,
        socket_path: str | os.PathLike[str],
        *,
        timeout_ms: int = 5000,
        refresh_ms: int = 1000,
        stale_expiry_ms: int = 300_000,
        max_signers: int = 4,
    ) -> None:
        super().__init__(name)
        self.socket_path = Path(os.path.expanduser(str(socket_path)))
        self.timeout_s = timeout_ms / 1000 if timeout_ms > 0 else None
        self.refresh_s = max(refresh_ms, 1) / 1000
        self.stale_expiry_s = stale_expiry_ms / 1000
        self._idle: list[AgentClient] = []
        self._sign_slots = anyio.Semaphore(max(1, max_signers))
        self._lister: AgentClient | None = None
        self._listing: tuple[Identity, ...] = ()
        self._raw: tuple[tuple[bytes, str], ...] = ()
        #: monotonic time of the last successful refresh (None: never, or withdrawn).
        self._good_at: float | None = None
        self._stale = False
        self._state = StoreState.OK
        self._last_error: str | None = None
        self._since_ms = int(time.time() * 1000)
        self._wakeup = anyio.Event()
        self._closed = False
        self._rejected_warned: tuple[int, float] = (0, -math.inf)
        #: blob -> None (fine) or why it was left out, for the blobs last listed.
        self._verdicts: dict[bytes, str | None] = {}
        #: monotonic time before which a looping upstream is not connected to again.
        self._loop_retry_at = -math.inf

    @classmethod
    def from_config(cls, settings: UpstreamStoreSettings) -> UpstreamStore:
        return cls(
            settings.name,
            settings.socket,
            timeout_ms=settings.timeout_ms,
            refresh_ms=settings.refresh_ms,
            stale_expiry_ms=settings.stale_expiry_ms,
            max_signers=settings.max_signers,
        )

    # -- connections ------------------------------------------------------------------

    async def _connect(self, timeout: float | None) -> AgentClient:
        """A new connection. A connect that hangs (full backlog of a stopped agent) is a
        timeout, not ``AgentUnavailable``: the upstream is stuck, not gone."""
        try:
            with anyio.fail_after(math.inf if timeout is None else timeout):
                client = await AgentClient.connect(
                    self.socket_path, timeout=None, response_timeout=timeout
                )
        except TimeoutError:
            raise AgentTimeout(
                f"the agent at {self.socket_path} did not accept a connection within {timeout:g} s"
            ) from None
        # The config check compares paths; a symlink, bind mount or other alias of the
        # agent's own socket gets past it. The kernel says who listens on the other end.
        if client.peer_pid() == os.getpid():
            await client.aclose()
            raise UpstreamIsSelf(
                f"{self.socket_path} leads back to this agent's own socket (SO_PEERCRED "
                "pid is this process): requests would loop; point stores[].socket at "
                "another agent"
            )
        return client

    async def _on_pooled(
        self,
        pool: list[AgentClient],
        deadline: float,
        call: Callable[[AgentClient], Awaitable[T]],
    ) -> T:
        """Run ``call`` on a pooled connection (or a new one) within ``deadline``.

        A pooled connection found dead (hung up while idle) is replaced once; a
        timeout or garbage is never retried, since the upstream may still be working on
        the request.
        """
        while True:
            client = pool.pop() if pool else None
            reused = client is not None
            remaining = _remaining(deadline)
            try:
                if client is None:
                    client = await self._connect(remaining)
                client.response_timeout = remaining
                result = await call(client)
            except AgentFailure:
                if client is not None:
                    pool.append(client)
                raise
            except AgentConnectionClosed:
                if client is not None:
                    await client.aclose()
                if reused:
                    continue
                raise
            except BaseException:
                if client is not None:
                    with anyio.CancelScope(shield=True):
                        await client.aclose()
                raise
            pool.append(client)
            return result

    # -- the background listing ---------------------------------------------------------

    async def open(self) -> None:
        """First listing before the agent serves (bounded by ``timeout_ms``)."""
        self._closed = False
        await self.refresh()

    async def maintain(self) -> None:
        """Refresh every ``refresh_ms`` (sooner when woken) until ``aclose``."""
        while not self._closed:
            with anyio.move_on_after(self.refresh_s):
                await self._wakeup.wait()
            self._wakeup = anyio.Event()
            if self._closed:
                return
            await self.refresh()

    async def refresh(self) -> None:
        """Ask the upstream for its keys once; never raises."""
        if time.monotonic() < self._loop_retry_at:
            return  # it led back to this agent a moment ago: degraded, keys withdrawn
        lister: list[AgentClient] = [self._lister] if self._lister is not None else []
        self._lister = None
        deadline = _deadline(self.timeout_s)
        try:
            keys = await self._on_pooled(lister, deadline, lambda c: c.list_identities())
        except AgentError as exc:
            for client in lister:
                await client.aclose()
            if isinstance(exc, UpstreamIsSelf):
                self._loop_retry_at = time.monotonic() + LOOP_RETRY_S
            self._refresh_failed(str(exc), gone=isinstance(exc, AgentUnavailable))
            return
        if self._closed:  # closed while this refresh was in flight
            for client in lister:
                await client.aclose()
            return
        self._lister = lister[0] if lister else None
        if self._state is StoreState.DEGRADED:
            log.info("store %s: upstream %s is back", self.name, self.socket_path)
            self._since_ms = int(time.time() * 1000)
        self._state, self._last_error, self._stale = StoreState.OK, None, False
        self._good_at = time.monotonic()
        raw = tuple((bytes(k.blob), k.comment) for k in keys)
        if raw != self._raw:  # unchanged (the usual case): no re-checking every refresh
            listing = await self._checked(raw)
            if self._closed:
                return
            self._set_listing(listing)
            self._raw = raw

    async def _checked(self, raw: tuple[tuple[bytes, str], ...]) -> tuple[Identity, ...]:
        """The identities of an upstream listing that OpenSSH's clients accept.

        A key of a type they know that fails their parse (or a certificate whose CA
        signature does not verify) makes them reject the whole answer, so one bad key
        would hide every store's keys. Checks run in a worker thread (certificate
        signatures) and only for blobs not seen in the previous listing.
        """
        known = self._verdicts
        fresh = [blob for blob, _ in raw if blob not in known]
        verdicts = {blob: known[blob] for blob, _ in raw if blob in known}
        if fresh:
            verdicts.update(await anyio.to_thread.run_sync(_check_blobs, fresh))
        self._verdicts = verdicts
        listing: list[Identity] = []
        rejected: list[tuple[bytes, str]] = []
        for blob, comment in raw:
            why = verdicts[blob]
            if why is None:
                listing.append(
                    Identity(blob=blob, comment=listed_comment(comment), store=self.name)
                )
            else:
                rejected.append((blob, why))
        self._warn_rejected(rejected)
        return tuple(listing)

    def _warn_rejected(self, rejected: list[tuple[bytes, str]]) -> None:
        count, last = self._rejected_warned
        now = time.monotonic()
        if not rejected:
            if count:
                log.info(
                    "store %s: upstream %s lists no rejected keys now", self.name, self.socket_path
                )
            self._rejected_warned = (0, -math.inf)
            return
        if len(rejected) == count and now - last < REJECTED_WARNING_INTERVAL_S:
            return
        self._rejected_warned = (len(rejected), now)
        blob, why = rejected[0]
        log.warning(
            "store %s: upstream %s listed %d key(s) that OpenSSH clients would reject, "
            "left out so that other keys stay usable (first: %s, %s)",
            self.name,
            self.socket_path,
            len(rejected),
            fingerprint_sha256(blob)[:19],
            why,
        )

    def _refresh_failed(self, reason: str, *, gone: bool) -> None:
        if self._state is not StoreState.DEGRADED or self._last_error != reason:
            log.warning(
                "store %s: upstream %s unavailable: %s", self.name, self.socket_path, reason
            )
        if self._state is not StoreState.DEGRADED:
            self._since_ms = int(time.time() * 1000)
        self._state, self._last_error = StoreState.DEGRADED, reason
        age = self._age()
        if gone or age is None or age >= self.stale_expiry_s:
            if self._listing:
                log.warning(
                    "store %s: withdrawing %d upstream keys (%s)",
                    self.name,
                    len(self._listing),
                    "upstream gone" if gone else "stale listing expired",
                )
            self._good_at = None
            self._stale = False
            self._verdicts = {}
            self._set_listing(())
        else:
            self._stale = True

    def _set_listing(self, listing: tuple[Identity, ...]) -> None:
        if not listing:
            self._raw = ()
        if listing != self._listing:
            self._listing = listing
            self._changed()

    def _age(self) -> float | None:
        return None if self._good_at is None else time.monotonic() - self._good_at

    # -- KeyStore API -----------------------------------------------------------------

    async def identities(self) -> Sequence[Identity]:
        """The last good listing: from memory, never a round trip to the upstream."""
        return self._listing

    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        deadline = _deadline(self.timeout_s)
        try:
            with anyio.fail_after(_remaining(deadline) or math.inf):
                await self._sign_slots.acquire()
        except TimeoutError:
            raise SignError(
                f"upstream agent busy: no free slot within {self.timeout_s:g} s"
            ) from None
        try:
            signature: bytes = await self._on_pooled(
                self._idle, deadline, lambda c: c.sign(blob, data, flags)
            )
        except AgentFailure:
            raise SignError("upstream agent refused to sign") from None
        except AgentError as exc:
            if isinstance(exc, AgentTimeout | AgentUnavailable):
                self._wakeup.set()  # let the refresher re-check the upstream now
            raise SignError(f"upstream agent unavailable: {exc}") from None
        finally:
            self._sign_slots.release()
        # Never pass on a signature the upstream did not make with this key (or made
        # with a weaker RSA algorithm than asked): it would be logged and counted as
        # this key's signature. Types the keys layer cannot verify (security keys) pass
        # through, as OpenSSH's forwarding does; only a failed check asks which it was.
        try:
            check_signature(blob, data, flags, signature)
        except AgentProtocolError as exc:
            if can_verify(blob):
                raise SignError(f"upstream agent answered a bad signature: {exc}") from None
        return signature

    async def _close_connections(self) -> None:
        clients, self._idle = self._idle, []
        if self._lister is not None:
            clients.append(self._lister)
            self._lister = None
        for client in clients:
            await client.aclose()

    async def aclose(self) -> None:
        self._closed = True
        self._wakeup.set()
        await self._close_connections()
        self._good_at, self._stale = None, False
        self._verdicts = {}
        self._set_listing(())

    async def reload(self) -> None:
        """Config reload: new connections, and a refresh right away; keys stay listed."""
        await self._close_connections()
        self._loop_retry_at = -math.inf
        self._wakeup.set()

    def health(self) -> StoreHealth:
        age = self._age()
        return StoreHealth(
            self.name,
            self.kind,
            self._state,
            len(self._listing),
            self._last_error,
            since_unix_ms=self._since_ms,
            detail={
                "socket": str(self.socket_path),
                "stale": self._stale,
                "listing_age_ms": None if age is None else int(age * 1000),
                "refresh_ms": int(self.refresh_s * 1000),
                "stale_expiry_ms": int(self.stale_expiry_s * 1000),
                "rejected_keys": sum(1 for why in self._verdicts.values() if why),
            },
        )


def _check_blobs(blobs: list[bytes]) -> dict[bytes, str | None]:
    """Worker thread: None for each blob OpenSSH's clients accept, else why not."""
    verdicts: dict[bytes, str | None] = {}
    for blob in blobs:
        try:
            check_listed_blob(blob)
        except KeyFormatError as exc:
            verdicts[blob] = str(exc)
        else:
            verdicts[blob] = None
    return verdicts


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float) -> float | None:
    """Seconds left (at least a little), or None for no limit."""
    if deadline == math.inf:
        return None
    return max(0.001, deadline - time.monotonic())
