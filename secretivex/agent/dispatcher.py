"""Where every agent message is handled: one method per message type (see ``_routes``).

The dispatcher is transport-free: it takes a parsed request and a connection context
and returns a complete reply frame. The connection loop (``agent/connection.py``) owns
the socket.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import anyio

from secretivex import __version__, protocol
from secretivex.agent.audit import AuditLog
from secretivex.agent.listeners import ListenerSpec
from secretivex.agent.lock import AgentLock, EmptyPassphrase, UnlockBusy
from secretivex.defaults import PKCS11_ALLOWLIST
from secretivex.keys import KeyLoadError, SoftwareKey, key_from_wire, signing, verify_signature
from secretivex.keys.identity import Identity, SigningError, fingerprint_sha256
from secretivex.metrics import MetricsRecorder
from secretivex.outcomes import RequestKind, RequestOutcome
from secretivex.policy.confirm import ConfirmRequest, confirm_unless_hangup
from secretivex.policy.destination import (
    DestinationCheck,
    SessionBinding,
    check_destination,
    identity_permitted,
    listing_permitted,
)
from secretivex.policy.engine import Policy
from secretivex.policy.peer import PeerCredentials, executable, process_chain
from secretivex.stores.base import KeyStore, StoreError, StoreHealth
from secretivex.stores.memory import OriginConflict, StoreFull
from secretivex.stores.registry import StoreRegistry

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (protocol.EXT_QUERY, protocol.EXT_SESSION_BIND, protocol.EXT_HEALTH)
MAX_BINDINGS = 16  # per connection, as OpenSSH
MAX_SESSION_ID = 128  # bytes, as OpenSSH (AGENT_MAX_SID_LEN); hashes are at most 64
#: SSH_AGENTC_REMOVE_ALL_RSA_IDENTITIES: ``ssh-add -D`` sends it after 19 "since the
#: agent might be forwarded, old or non-OpenSSH"; OpenSSH's agent answers it as 19.
SSH1_REMOVE_ALL_RSA_IDENTITIES = 9
MAX_DESTINATION_CONSTRAINTS = 1024  # per key, as OpenSSH (AGENT_MAX_DEST_CONSTRAINTS)
MAX_USER_PATTERN = 256  # bytes, as OpenSSH 10.5 (AGENT_USER_CONSTRAINT_MAX_LEN)
LISTING_WARNING_INTERVAL_S = 10.0

FAILURE = protocol.FAILURE_FRAME
SUCCESS = protocol.SUCCESS_FRAME


@dataclass(eq=False)
class ConnectionContext:
    listener: ListenerSpec
    peer: PeerCredentials
    conn_id: int
    bindings: list[SessionBinding] = field(default_factory=list)
    #: A session-bind was attempted on this connection (OpenSSH 9.6): if none was
    #: recorded, destination-constrained keys are neither listed nor used here.
    bind_attempted: bool = False
    #: The client's socket, watched for a hang-up while a confirmation is pending.
    sock: socket.socket | None = None
    _provenance: tuple[str, tuple[str, ...]] | None = None

    def provenance(self) -> tuple[str, tuple[str, ...]]:
        """(executable, parent chain), read from /proc once per connection when needed."""
        if self._provenance is None:
            self._provenance = (executable(self.peer.pid), tuple(process_chain(self.peer.pid)))
        return self._provenance


class Limits:
    """``max_signers`` and ``sign_timeout_ms``: how many slow signs may run at once and how
    long a request may wait (queue + sign) before it fails."""

    def __init__(self, max_signers: int, sign_timeout_ms: int) -> None:
        self.max_signers = max(1, max_signers)
        self.sign_timeout_ms = sign_timeout_ms
        self.signers = anyio.Semaphore(self.max_signers)
        self.sign_timeout_s = sign_timeout_ms / 1000 if sign_timeout_ms > 0 else None
        #: The signing pool (keys/signing.py decides which keys sign in it): one
        #: thread per CPU, as cryptography releases the GIL while signing.
        self.sign_threads = anyio.CapacityLimiter(signing.pool_size())
        #: Worker threads that parse added keys and verify session-bind signatures:
        #: cryptography releases the GIL in verifications, so a burst of them runs
        #: here while the event loop keeps answering other clients.
        self.check_threads = anyio.CapacityLimiter(2)


class Refused(Exception):
    """Raised inside a handler to end the request with a failure reply.

    Carries the outcome code, a detail for the audit log and, when the request named a
    key the agent holds, that key's fingerprint.
    """

    def __init__(
        self, outcome: RequestOutcome, detail: str = "", *, key: Identity | None = None
    ) -> None:
        super().__init__(detail or outcome.value)
        self.outcome = outcome
        self.detail = detail
        self.fingerprint = "" if key is None else key.fingerprint


Handler = Callable[[ConnectionContext, Any], Awaitable[bytes]]
#: A handler's synchronous part: the reply, or None when the request must wait.
QuickHandler = Callable[[ConnectionContext, Any], "bytes | None"]

#: What a locked agent still answers: extensions too, of which only session-bind is
#: processed while locked (OpenSSH 10.5), the rest refused in ``extension``.
_WHILE_LOCKED = frozenset((RequestKind.UNLOCK, RequestKind.LIST, RequestKind.EXTENSION))


@dataclass(frozen=True, slots=True)
class _Route:
    """How one message type is handled: ``handler`` always can; ``now``, when set,
    answers without waiting whenever it can (returning None when it cannot)."""

    kind: RequestKind
    handler: Handler
    now: QuickHandler | None = None


@dataclass(slots=True)
class Pending:
    """A parsed request :meth:`Dispatcher.answer_now` left for :meth:`Dispatcher.answer_later`."""

    route: _Route
    request: Any
    start_ns: int


class Dispatcher:
    def __init__(
        self,
        registry: StoreRegistry,
        policy: Policy,
        limits: Limits,
        *,
        allow_add: bool = True,
        pkcs11_allowlist: tuple[str, ...] = PKCS11_ALLOWLIST,
        metrics: MetricsRecorder | None = None,
        audit: AuditLog | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
        spawn: Callable[[Callable[[], Awaitable[None]]], None] | None = None,
        default_lifetime_s: int = 0,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.limits = limits
        self.allow_add = allow_add
        self.pkcs11_allowlist = pkcs11_allowlist
        self.metrics = metrics or MetricsRecorder()
        self.audit = audit or AuditLog(None)
        self.health = health or (lambda: {})
        #: Starts a background task in the agent's task group (store maintenance).
        self.spawn = spawn or (lambda fn: None)
        self.lock = AgentLock()
        #: ``agent.default_lifetime`` / ``-t``: applied when ssh-add sets no lifetime.
        self.default_lifetime_s = default_lifetime_s
        self._listing_frames: dict[int, tuple[tuple[Identity, ...], bytes]] = {}
        self._truncation_warned_at = -math.inf
        self._constrained_memo: tuple[tuple[Identity, ...] | None, bool] = (None, False)
        self._routes: dict[type, _Route] = {
            protocol.RequestIdentities: _Route(
                RequestKind.LIST, self.request_identities, self.identities_now
            ),
            protocol.SignRequest: _Route(RequestKind.SIGN, self.sign, self.sign_now),
            protocol.AddIdentity: _Route(RequestKind.ADD, self.add_identity),
            protocol.RemoveIdentity: _Route(RequestKind.REMOVE, self.remove_identity),
            protocol.RemoveAllIdentities: _Route(RequestKind.REMOVE_ALL, self.remove_all),
            protocol.AddSmartcardKey: _Route(RequestKind.ADD_SMARTCARD, self.add_smartcard),
            protocol.RemoveSmartcardKey: _Route(
                RequestKind.REMOVE_SMARTCARD, self.remove_smartcard
            ),
            protocol.Lock: _Route(RequestKind.LOCK, self.lock_agent),
            protocol.Unlock: _Route(RequestKind.UNLOCK, self.unlock_agent),
            protocol.Extension: _Route(RequestKind.EXTENSION, self.extension),
        }

    # -- entry point ------------------------------------------------------------------

    async def handle(self, ctx: ConnectionContext, payload: bytes) -> bytes:
        """Parse one payload, run its handler, observe, and return the reply frame."""
        reply = self.answer_now(ctx, payload)
        if isinstance(reply, bytes):
            return reply
        return await self.answer_later(ctx, reply)

    def answer_now(self, ctx: ConnectionContext, payload: bytes) -> bytes | Pending:
        """The reply frame when the request needs no waiting, else a ``Pending`` for
        :meth:`answer_later`.

        Called from the connection's data callback: most requests (a software-key
        signature, a listing from the cache, anything refused) end here, without a task
        or a coroutine per request (see docs/performance.md)."""
        start = time.perf_counter_ns()
        try:
            request = protocol.parse_request(payload)
        except protocol.ProtocolError as exc:
            self._observe(
                ctx, RequestKind.MALFORMED, RequestOutcome.BAD_REQUEST, start, detail=str(exc)
            )
            return FAILURE
        route = self._routes.get(type(request))
        if route is None:
            if not (
                type(request) is protocol.UnknownRequest
                and request.msg_type == SSH1_REMOVE_ALL_RSA_IDENTITIES
                and not request.body
            ):
                self._observe(ctx, RequestKind.UNKNOWN, RequestOutcome.UNSUPPORTED, start)
                return FAILURE
            route = self._routes[protocol.RemoveAllIdentities]
        if self.lock.locked and route.kind not in _WHILE_LOCKED:
            self._observe(ctx, route.kind, RequestOutcome.LOCKED, start)
            return FAILURE
        if route.now is not None:
            try:
                reply = route.now(ctx, request)
            except Refused as exc:
                return self._refused(ctx, route.kind, exc, start)
            except Exception:
                log.exception("internal error handling %s", route.kind)
                self._observe(ctx, route.kind, RequestOutcome.INTERNAL_ERROR, start)
                return FAILURE
            if reply is not None:
                self._observe(ctx, route.kind, RequestOutcome.OK, start, request=request)
                return reply
        return Pending(route, request, start)

    async def answer_later(self, ctx: ConnectionContext, pending: Pending) -> bytes:
        """Finish a request :meth:`answer_now` could not (confirmation, a token or an
        upstream agent, an add, a lock): awaited in the connection's task."""
        kind, start = pending.route.kind, pending.start_ns
        if self.lock.locked and kind not in _WHILE_LOCKED:
            # Locked since answer_now looked: the lock's reply went out first.
            self._observe(ctx, kind, RequestOutcome.LOCKED, start)
            return FAILURE
        try:
            reply = await pending.route.handler(ctx, pending.request)
        except Refused as exc:
            return self._refused(ctx, kind, exc, start)
        except Exception:
            log.exception("internal error handling %s", kind)
            self._observe(ctx, kind, RequestOutcome.INTERNAL_ERROR, start)
            return FAILURE
        self._observe(ctx, kind, RequestOutcome.OK, start, request=pending.request)
        return reply

    def _refused(
        self, ctx: ConnectionContext, kind: RequestKind, exc: Refused, start_ns: int
    ) -> bytes:
        self._observe(ctx, kind, exc.outcome, start_ns, exc.fingerprint, exc.detail)
        if exc.outcome is RequestOutcome.EXT_FAILURE:
            return protocol.EXTENSION_FAILURE_FRAME
        return FAILURE

    def _observe(
        self,
        ctx: ConnectionContext,
        kind: RequestKind,
        outcome: RequestOutcome,
        start_ns: int,
        fingerprint: str = "",
        detail: str = "",
        request: Any = None,
    ) -> None:
        latency = time.perf_counter_ns() - start_ns
        self.metrics.on_request(kind.value, outcome.value, latency)
        if self.audit.enabled:
            if not fingerprint and request is not None:
                fingerprint = _request_fingerprint(request)
            record: dict[str, Any] = {
                "socket": str(ctx.listener.path),
                "listener": ctx.listener.name,
                "request": kind.value,
                "outcome": outcome.value,
                "latency_us": latency // 1000,
                "peer_uid": ctx.peer.uid,
                "peer_gid": ctx.peer.gid,
                "peer_pid": ctx.peer.pid,
                "peer_exe": ctx.provenance()[0],
            }
            if fingerprint:
                record["key"] = fingerprint
            if detail:
                record["detail"] = detail
            self.audit.record(**record)

    # -- listing ----------------------------------------------------------------------

    async def visible_identities(self, listener: ListenerSpec) -> tuple[Identity, ...]:
        idents = await self.registry.identities()
        return tuple(i for i in idents if listener.sees(i) and self.policy.permits(i))

    async def request_identities(self, ctx: ConnectionContext, _: Any) -> bytes:
        if self.lock.locked:
            return protocol.encode_identities_answer(())
        return self._listing(ctx, await self.registry.identities())

    def identities_now(self, ctx: ConnectionContext, _: Any) -> bytes | None:
        if self.lock.locked:
            return protocol.encode_identities_answer(())
        idents = self.registry.listing_now()
        return None if idents is None else self._listing(ctx, idents)

    def _listing(self, ctx: ConnectionContext, idents: tuple[Identity, ...]) -> bytes:
        # Only a bound connection with destination-constrained keys around needs its own
        # listing; everyone else shares the listener's cached frame.
        bound = (bool(ctx.bindings) or ctx.bind_attempted) and self._constrained(idents)
        cached = None if bound else self._listing_frames.get(id(ctx.listener))
        if cached is not None and cached[0] is idents:
            self.metrics.on_list_cache(True)
            return cached[1]
        self.metrics.on_list_cache(False)
        visible = (i for i in idents if ctx.listener.sees(i) and self.policy.permits(i))
        if bound and not ctx.bindings:
            # Every session-bind on this connection failed: not a local connection
            # either, so no destination-constrained key (OpenSSH 9.6).
            visible = (i for i in visible if not i.constraints)
        elif bound:
            # A connection ssh bound to a session (possibly forwarded) sees only keys
            # its hops permit, as OpenSSH's agent lists them.
            visible = (i for i in visible if listing_permitted(i, ctx.bindings))
        frame = protocol.encode_identities_answer(self._fit_in_frame(visible))
        if not bound:
            self._listing_frames[id(ctx.listener)] = (idents, frame)
        return frame

    def _constrained(self, idents: tuple[Identity, ...]) -> bool:
        """Whether any key in this listing carries destination constraints (memoized)."""
        if self._constrained_memo[0] is not idents:
            self._constrained_memo = (idents, any(i.constraints for i in idents))
        return self._constrained_memo[1]

    def _fit_in_frame(self, idents: Iterable[Identity]) -> list[tuple[bytes, bytes]]:
        """The identities, in listing order, that fit in one agent message.

        The memory store refuses adds beyond its share of a frame, but configured,
        upstream and smartcard stores may still list more than 256 KiB: rather than
        failing every listing (what an oversized answer would do to every client), the
        answer stops at the limit, keeping the earliest keys (configured stores come
        first), and a rate-limited warning says how many were left out.
        """
        budget = protocol.MAX_MESSAGE_SIZE - 5
        out: list[tuple[bytes, bytes]] = []
        left_out = 0
        for ident in idents:
            try:
                raw = ident.comment.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = ident.comment.encode("utf-8", "replace")
            size = 8 + len(ident.blob) + len(raw)
            if left_out or size > budget:
                left_out += 1
                continue
            budget -= size
            out.append((ident.blob, raw))
        if left_out:
            self._truncation_warning(left_out)
        return out

    def _truncation_warning(self, left_out: int) -> None:
        now = time.monotonic()
        if now - self._truncation_warned_at >= LISTING_WARNING_INTERVAL_S:
            self._truncation_warned_at = now
            log.warning(
                "key listing truncated at the 256 KiB message limit: %d keys left out",
                left_out,
            )

    def invalidate(self) -> None:
        """Drop cached listings (policy or listeners changed)."""
        self._listing_frames.clear()

    # -- signing ----------------------------------------------------------------------

    async def sign(self, ctx: ConnectionContext, req: protocol.SignRequest) -> bytes:
        found = await self.registry.owner(req.key_blob)
        store, ident, destination = self._sign_target(ctx, req, found)
        if self.policy.needs_confirm(ident):
            await self._confirm(ctx, ident, req, destination)
        key = store.local_key(ident.blob)
        if key is not None and signing.signs_inline(key):
            return self._sign_inline(store, ident, key, req)
        signature = await self._sign_slow(store, ident, req, key)
        self.metrics.on_sign(store.name)
        return protocol.encode_sign_response(signature)

    def sign_now(self, ctx: ConnectionContext, req: protocol.SignRequest) -> bytes | None:
        """A software key's signature (tens of microseconds) when nothing needs waiting
        for: a confirmation, a token, an upstream agent or a big key go to ``sign``."""
        if not self.registry.listing_fresh():
            return None
        store, ident, _ = self._sign_target(ctx, req, self.registry.owner_now(req.key_blob))
        if self.policy.needs_confirm(ident):
            return None
        key = store.local_key(ident.blob)
        if key is None or not signing.signs_inline(key):
            return None
        return self._sign_inline(store, ident, key, req)

    def _sign_target(
        self,
        ctx: ConnectionContext,
        req: protocol.SignRequest,
        found: tuple[KeyStore, Identity] | None,
    ) -> tuple[KeyStore, Identity, str]:
        """The key's store, the key and its destination, once this connection may sign
        with it (else ``Refused``)."""
        if found is None:
            raise Refused(RequestOutcome.NOT_FOUND)
        store, ident = found
        if not ctx.listener.sees(ident):
            raise Refused(RequestOutcome.SCOPE_DENIED, key=ident)
        if not self.policy.permits(ident):
            raise Refused(RequestOutcome.POLICY_DENIED, key=ident)
        destination = ""
        if ident.constraints:
            verdict: DestinationCheck = check_destination(ident, ctx.bindings, req.data)
            if not verdict.allowed:
                raise Refused(RequestOutcome.DESTINATION_DENIED, verdict.reason, key=ident)
            destination = verdict.destination
        return store, ident, destination

    def _sign_inline(
        self, store: KeyStore, ident: Identity, key: SoftwareKey, req: protocol.SignRequest
    ) -> bytes:
        """Sign on the event loop: no queue, no thread hop (keys/signing.py decides
        which keys are cheap enough)."""
        try:
            signature: bytes = key.sign(req.data, req.flags)
        except Exception as exc:
            raise Refused(RequestOutcome.SIGN_ERROR, str(exc), key=ident) from None
        self.metrics.on_queue_wait(0)
        self.metrics.on_sign(store.name)
        return protocol.encode_sign_response(signature)

    async def _sign_slow(
        self,
        store: KeyStore,
        ident: Identity,
        req: protocol.SignRequest,
        key: SoftwareKey | None = None,
    ) -> bytes:
        queued = time.perf_counter_ns()
        # A store that bounds its own concurrency (an upstream agent that may hang) must
        # not hold the global max_signers slots, or it starves token signs.
        slots: AbstractAsyncContextManager[Any] = (
            self.limits.signers if store.shares_signer_slots else nullcontext()
        )
        with anyio.move_on_after(self.limits.sign_timeout_s) as scope:
            async with slots:
                self.metrics.on_queue_wait(time.perf_counter_ns() - queued)
                try:
                    if key is not None:  # big in-memory key: sign off the event loop
                        signature: bytes = await anyio.to_thread.run_sync(
                            key.sign, req.data, req.flags, limiter=self.limits.sign_threads
                        )
                        return signature
                    return await store.sign(ident.blob, req.data, req.flags)
                except (StoreError, SigningError) as exc:
                    raise Refused(RequestOutcome.SIGN_ERROR, str(exc), key=ident) from None
        assert scope.cancelled_caught
        raise Refused(RequestOutcome.TIMEOUT, key=ident)

    async def _confirm(
        self, ctx: ConnectionContext, ident: Identity, req: protocol.SignRequest, destination: str
    ) -> None:
        exe, chain = ctx.provenance()
        request = ConfirmRequest(
            fingerprint=ident.fingerprint,
            comment=ident.comment,
            key_type=ident.key_type,
            data_len=len(req.data),
            socket=str(ctx.listener.path),
            peer_pid=ctx.peer.pid,
            peer_uid=ctx.peer.uid,
            peer_gid=ctx.peer.gid,
            peer_exe=exe,
            peer_chain=chain,
            destination=destination,
        )
        verdict = await confirm_unless_hangup(self.policy.confirm(request), ctx.sock)
        self.metrics.on_confirm(verdict.outcome.value)
        if not verdict.outcome.allows:
            raise Refused(verdict.outcome.request_outcome, verdict.reason, key=ident)

    # -- adding and removing ----------------------------------------------------------

    def _may_add(self, ctx: ConnectionContext) -> None:
        if not (self.allow_add and ctx.listener.allow_add):
            raise Refused(RequestOutcome.ADD_REFUSED, "adding keys is disabled on this socket")

    async def add_identity(self, ctx: ConnectionContext, req: protocol.AddIdentity) -> bytes:
        self._may_add(ctx)
        c = req.constraints
        if c.maxsign is not None:
            raise Refused(RequestOutcome.UNSUPPORTED, "maxsign constraint (XMSS) is not supported")
        try:
            # Cheap checks only (no primality tests, RSA capped at 16384 bits), but a
            # certificate's CA signature check releases the GIL: run it off the loop.
            key = await anyio.to_thread.run_sync(
                key_from_wire,
                req.key.key_type,
                req.key.fields,
                req.comment,
                limiter=self.limits.check_threads,
            )
        except KeyLoadError as exc:
            raise Refused(RequestOutcome.BAD_KEY, str(exc)) from None
        if "\x00" in req.comment:  # OpenSSH reads a C string: a NUL byte is malformed
            raise Refused(RequestOutcome.BAD_REQUEST, "key comment contains a NUL byte")
        extra = tuple(e for e in c.extensions if isinstance(e, protocol.DestinationConstraints))
        others = [e for e in c.extensions if not isinstance(e, protocol.DestinationConstraints)]
        if others:
            raise Refused(
                RequestOutcome.UNSUPPORTED, f"constraint {type(others[0]).__name__} not supported"
            )
        for dests in extra:
            problem = _destination_problem(dests)
            if problem:
                raise Refused(RequestOutcome.BAD_REQUEST, problem)
        if not ctx.listener.is_main:
            # Only the owner may put constraints on (or a lifetime to) a key the agent
            # serves from its configuration.
            holder = await self.registry.served_elsewhere(key.public_blob)
            if holder is not None:
                raise Refused(
                    RequestOutcome.ADD_REFUSED,
                    f"key is served by store {holder}; only the main socket may add it",
                )
        if ctx.bindings or ctx.bind_attempted:  # else no key is hidden from it
            held = await self.registry.owner(key.public_blob)
            if held is not None and _hidden_by_destination(ctx, held[1]):
                raise Refused(
                    RequestOutcome.DESTINATION_DENIED, "key not permitted here", key=held[1]
                )
        ident = self._store_added(ctx, key, req.comment, c, extra)
        log.info(
            "added key %s %s (lifetime=%s confirm=%s destinations=%d)",
            ident.fingerprint,
            req.comment,
            c.lifetime or self.default_lifetime_s or None,
            c.confirm,
            len(extra),
        )
        return SUCCESS

    def _store_added(
        self,
        ctx: ConnectionContext,
        key: Any,
        comment: str,
        c: protocol.Constraints,
        extra: tuple[Any, ...],
    ) -> Identity:
        """Put an added key in the memory store, in the scope of the socket it came
        through; a full store or a key held for another socket's scope is a failure."""
        try:
            return self.registry.memory.add(
                key,
                comment,
                # An explicit lifetime, even 0 (expired at once, as OpenSSH), wins
                # over the agent's default.
                lifetime_s=c.lifetime
                if c.lifetime is not None
                else self.default_lifetime_s or None,
                confirm=c.confirm,
                constraints=extra,
                origin=ctx.listener.origin,
                lapses=c.lifetime is not None,
            )
        except StoreFull as exc:
            raise Refused(RequestOutcome.STORE_FULL, str(exc)) from None
        except OriginConflict as exc:
            raise Refused(RequestOutcome.ADD_REFUSED, str(exc)) from None

    async def remove_identity(self, ctx: ConnectionContext, req: protocol.RemoveIdentity) -> bytes:
        """Remove one key. The main socket removes any ``ssh-add``ed key (a copy of a
        configured store's key too: the store serves it again, without the copy's
        constraints); a scoped listener only keys added through it (never the owner's,
        even when it sees them)."""
        self._may_add(ctx)
        found = await self.registry.owner(req.key_blob)
        if found is None or not ctx.listener.sees(found[1]):
            raise Refused(RequestOutcome.NOT_FOUND)
        if _hidden_by_destination(ctx, found[1]):
            raise Refused(RequestOutcome.DESTINATION_DENIED, "key not permitted here", key=found[1])
        if ctx.listener.is_main and self.registry.memory.remove(req.key_blob, origin=""):
            return SUCCESS
        if not self.registry.is_removable(found[0]):
            raise Refused(
                RequestOutcome.REMOVE_REFUSED, f"key belongs to configured store {found[0].name}"
            )
        origin = None if ctx.listener.is_main else ctx.listener.origin
        if not self.registry.memory.remove(req.key_blob, origin=origin):
            raise Refused(RequestOutcome.REMOVE_REFUSED, "key was not added through this socket")
        return SUCCESS

    async def remove_all(self, ctx: ConnectionContext, _: Any) -> bytes:
        """``ssh-add -D``: on the main socket every added key and every ``ssh-add -s``
        module; on a scoped listener only the keys added through that listener."""
        self._may_add(ctx)
        if not ctx.listener.is_main:
            removed = self.registry.memory.clear(origin=ctx.listener.origin)
            log.info("removed %d keys added through %s", removed, ctx.listener.name)
            return SUCCESS
        self.registry.memory.clear()
        for store in self.registry.smartcards:
            await store.aclose()
        self.registry.smartcards.clear()
        return SUCCESS

    def _main_only(self, ctx: ConnectionContext, what: str) -> None:
        if not ctx.listener.is_main:
            raise Refused(RequestOutcome.ADD_REFUSED, f"{what} only through the main socket")

    async def add_smartcard(self, ctx: ConnectionContext, req: protocol.AddSmartcardKey) -> bytes:
        self._may_add(ctx)
        # A module's keys cannot carry a listener scope, and loading code into the agent
        # is the owner's decision: never through a scoped listener.
        self._main_only(ctx, "PKCS#11 modules may be added")
        if ctx.bindings or ctx.bind_attempted:
            # OpenSSH 9.4 (CVE-2023-38408): a session-bound (forwarded) connection
            # never loads a module, whatever the allow-list says.
            raise Refused(
                RequestOutcome.ADD_REFUSED, "PKCS#11 modules may not be added from a remote host"
            )
        if req.constraints.lifetime or req.constraints.confirm or req.constraints.extensions:
            raise Refused(
                RequestOutcome.UNSUPPORTED, "constraints on smartcard keys are not supported"
            )
        from secretivex.stores.pkcs11 import open_smartcard

        if self._smartcards_of(req.reader_id):
            raise Refused(RequestOutcome.ADD_REFUSED, "module already added")
        try:
            store = await open_smartcard(req.reader_id, req.pin, self.pkcs11_allowlist)
        except StoreError as exc:
            log.warning("ssh-add -s %s refused: %s", req.reader_id, exc)
            raise Refused(RequestOutcome.ADD_REFUSED, str(exc)) from None
        self.registry.smartcards.append(store)
        self.spawn(store.maintain)  # fault recovery; returns by itself after aclose()
        log.info(
            "smartcard module %s added (%d keys)", req.reader_id, len(await store.identities())
        )
        return SUCCESS

    def _smartcards_of(self, module: str) -> list[KeyStore]:
        from secretivex.stores.pkcs11 import same_module

        return [
            s for s in self.registry.smartcards if same_module(getattr(s, "module", ""), module)
        ]

    async def remove_smartcard(
        self, ctx: ConnectionContext, req: protocol.RemoveSmartcardKey
    ) -> bytes:
        self._may_add(ctx)
        self._main_only(ctx, "PKCS#11 modules may be removed")
        matching = self._smartcards_of(req.reader_id)
        if not matching:
            raise Refused(RequestOutcome.NOT_FOUND)
        for store in matching:
            self.registry.smartcards.remove(store)
            await store.aclose()
        return SUCCESS

    # -- lock -------------------------------------------------------------------------

    async def lock_agent(self, ctx: ConnectionContext, req: protocol.Lock) -> bytes:
        if not ctx.listener.allow_lock:
            raise Refused(RequestOutcome.LOCK_REFUSED, "locking is disabled on this socket")
        if b"\x00" in req.passphrase:
            # A C string to OpenSSH (which exits on it); no ssh-add -x can send one.
            raise Refused(RequestOutcome.BAD_REQUEST, "lock passphrase contains a NUL byte")
        try:
            locked = await self.lock.lock(req.passphrase)
        except EmptyPassphrase as exc:
            raise Refused(RequestOutcome.BAD_PASSPHRASE, str(exc)) from None
        if not locked:
            raise Refused(RequestOutcome.ALREADY_LOCKED)
        log.info("agent locked by uid %d", ctx.peer.uid)
        return SUCCESS

    async def unlock_agent(self, ctx: ConnectionContext, req: protocol.Unlock) -> bytes:
        if not ctx.listener.allow_lock:
            raise Refused(RequestOutcome.LOCK_REFUSED, "locking is disabled on this socket")
        try:
            unlocked = await self.lock.unlock(req.passphrase)
        except UnlockBusy as exc:
            raise Refused(RequestOutcome.UNLOCK_BUSY, str(exc)) from None
        if not unlocked:
            raise Refused(RequestOutcome.BAD_PASSPHRASE)
        log.info("agent unlocked by uid %d", ctx.peer.uid)
        return SUCCESS

    # -- extensions -------------------------------------------------------------------

    async def extension(self, ctx: ConnectionContext, req: protocol.Extension) -> bytes:
        if req.name == protocol.EXT_SESSION_BIND:
            # Processed while locked too (OpenSSH 10.5): a connection forwarded while
            # the agent is locked must still be recorded as forwarded, or after unlock
            # its next hop's bind would pass for a direct connection from this host.
            return await self._session_bind(ctx, req)
        if self.lock.locked:
            raise Refused(RequestOutcome.LOCKED)
        if req.name == protocol.EXT_QUERY:
            return _extension_reply(
                protocol.EXT_QUERY, protocol.encode_query_reply(SUPPORTED_EXTENSIONS)
            )
        if req.name == protocol.EXT_HEALTH:
            return _extension_reply(protocol.EXT_HEALTH, await self._health_json(ctx))
        # draft-miller-ssh-agent §3.8 and OpenSSH's process_extension: an extension the
        # agent does not support gets plain SSH_AGENT_FAILURE. EXTENSION_FAILURE (28)
        # would tell a probing client "supported, but it failed".
        raise Refused(RequestOutcome.UNSUPPORTED, f"unsupported extension {req.name[:64]!r}")

    async def _session_bind(self, ctx: ConnectionContext, req: protocol.Extension) -> bytes:
        ctx.bind_attempted = True
        try:
            bind = protocol.parse_session_bind(req.contents)
        except protocol.ProtocolError as exc:
            raise Refused(RequestOutcome.BAD_REQUEST, str(exc)) from None
        if len(bind.session_id) > MAX_SESSION_ID:
            raise Refused(RequestOutcome.BIND_INVALID, "session id too long")
        # Host keys are capped as OpenSSH caps them (RSA 1024-16384 bits); the
        # verification itself (up to ~10 ms for a hostile RSA key) releases the GIL,
        # so bursts of binds run in worker threads, not on the event loop.
        verified = await anyio.to_thread.run_sync(
            verify_signature,
            bind.host_key,
            bind.session_id,
            bind.signature,
            limiter=self.limits.check_threads,
        )
        if not verified:
            raise Refused(RequestOutcome.BIND_INVALID, "session-bind signature does not verify")
        # As OpenSSH's process_ext_session_bind: a connection bound for authentication
        # takes no further bind (not even the same one again); on a forwarding chain
        # the same bind again is a no-op and a session id rebound to another key fails.
        if ctx.bindings and not ctx.bindings[-1].is_forwarding:
            raise Refused(
                RequestOutcome.BIND_INVALID, "connection already bound for authentication"
            )
        for existing in ctx.bindings:
            if existing.session_id == bind.session_id:
                if existing.host_key != bind.host_key:
                    raise Refused(
                        RequestOutcome.BIND_INVALID, "session id rebound to another host key"
                    )
                return SUCCESS
        if len(ctx.bindings) >= MAX_BINDINGS:
            raise Refused(RequestOutcome.BIND_INVALID, "too many session bindings")
        ctx.bindings.append(SessionBinding(bind.host_key, bind.session_id, bind.is_forwarding))
        return SUCCESS

    async def _health_json(self, ctx: ConnectionContext) -> bytes:
        """Agent state for ``client health``: everything on the main socket; on a scoped
        listener only what that listener may see (stores it sees keys of, counted over
        its keys, without paths or errors; itself among the listeners; no connection
        counts), so a scoped peer learns nothing about out-of-scope keys or sockets."""
        import orjson

        doc: dict[str, Any] = {"version": __version__, "locked": self.lock.locked}
        healths = self.registry.health()
        if ctx.listener.is_main:
            doc["stores"] = [_store_health(h) for h in healths]
            doc.update(self.health())
            return orjson.dumps(doc, default=str)
        counts: dict[str, int] = {}
        for ident in await self.registry.identities():
            if ctx.listener.sees(ident) and self.policy.permits(ident):
                counts[ident.store] = counts.get(ident.store, 0) + 1
        doc["stores"] = [
            {**_store_health(h), "keys": counts[h.name], "last_error": None, "detail": {}}
            for h in healths
            if h.name in counts
        ]
        own = str(ctx.listener.path)
        listeners = self.health().get("listeners") or []
        doc["listeners"] = [
            entry for entry in listeners if isinstance(entry, dict) and entry.get("socket") == own
        ]
        return orjson.dumps(doc, default=str)


def _hidden_by_destination(ctx: ConnectionContext, ident: Identity) -> bool:
    """Whether this connection's session-binds make a destination-constrained key "not
    visible" (OpenSSH's identity_permitted), so it may neither remove nor replace it."""
    if not ident.constraints:
        return False
    if not ctx.bindings:
        return ctx.bind_attempted
    return not identity_permitted(ident, ctx.bindings, None).allowed


def _destination_problem(dests: protocol.DestinationConstraints) -> str:
    """Why OpenSSH's ``parse_dest_constraint`` would refuse these destinations ("" when
    it would not): user and host names are C strings (no NUL byte), user patterns at
    most 256 bytes; a "from" hop names a host exactly when it lists host keys and never
    a user; a "to" hop needs a host and its keys; at most 1024 constraints."""
    if len(dests.constraints) > MAX_DESTINATION_CONSTRAINTS:
        return "too many destination constraints"
    for c in dests.constraints:
        if any("\x00" in f for h in (c.from_hop, c.to_hop) for f in (h.user, h.hostname)):
            return "destination constraint host or user contains a NUL byte"
        if len(c.to_hop.user.encode("utf-8", "surrogateescape")) > MAX_USER_PATTERN:
            return "destination constraint user pattern too long"
        if bool(c.from_hop.hostname) != bool(c.from_hop.keys) or c.from_hop.user:
            return 'inconsistent "from" hop in destination constraint'
        if not (c.to_hop.hostname and c.to_hop.keys):
            return 'incomplete "to" hop in destination constraint'
    return ""


def _store_health(h: StoreHealth) -> dict[str, Any]:
    return {
        "name": h.name,
        "kind": h.kind,
        "state": h.state.value,
        "keys": h.keys,
        "last_error": h.last_error,
        "detail": h.detail,
    }


def _extension_reply(name: str, contents: bytes) -> bytes:
    return protocol.frame(protocol.encode_response(protocol.ExtensionResponse(name, contents)))


def _request_fingerprint(request: Any) -> str:
    """The key a request names, for the audit log (computed only when auditing)."""
    blob = getattr(request, "key_blob", None)
    return "" if blob is None else fingerprint_sha256(blob)
