"""One client connection, from accept to close: admit it, cut frames, answer them.

What one peer can hold is bounded (see :mod:`secretivex.agent.limits`): connection
slots, bytes of unfinished frames and the time to finish a frame. Pipelined requests
yield to other connections between requests.

A connection is an asyncio protocol (``Connection``): the event loop keeps its socket
registered and calls it as bytes arrive. It is admitted when made, and a request that
needs no waiting (a software-key signature, a listing from the cache, anything
refused) is answered in the data callback itself. Only a request that must wait (a
confirmation, a token, an upstream agent, an add), or a pipelined batch, gets a task,
owned by ``ConnectionTasks``, for as long as it runs. An idle connection holds no task.
A task per connection, its waits and its wake-ups were most of the agent's CPU per
connection beyond the signature itself (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel

from secretivex import protocol
from secretivex.agent.audit import PEER_DENIED, PEER_REVOKED
from secretivex.agent.dispatcher import ConnectionContext, Dispatcher, Pending
from secretivex.agent.limits import ConnectionTracker
from secretivex.agent.listeners import ListenerSpec
from secretivex.agent.throttle import LogThrottle
from secretivex.policy.peer import peer_credentials

log = logging.getLogger(__name__)
refusals = LogThrottle(log)

__all__ = [
    "Connection",
    "ConnectionHub",
    "ConnectionTasks",
    "ConnectionTracker",
    "refusals",
    "serve_connection",
]

#: Reading pauses while this many bytes wait for the connection's task.
_QUEUE_SIZE = 64 * 1024
#: Replies of one pipelined batch are flushed once this many bytes are pending; writing
#: waits (and a connection stops reading) while the transport holds more than this.
_FLUSH_SIZE = 64 * 1024
#: A pipelined batch lets other connections run at least this often.
_YIELD_AFTER_S = 0.0005


class ConnectionHub:
    """What every connection of the agent shares: the dispatcher, the limits' bookkeeping,
    the owner of request tasks and the idle timeout (a reload may change it)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        tracker: ConnectionTracker,
        idle_timeout_s: float | None,
        tasks: ConnectionTasks | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.tracker = tracker
        self.idle_timeout_s = idle_timeout_s
        self.tasks = tasks or ConnectionTasks()


async def serve_connection(
    sock: socket.socket,
    listener: ListenerSpec,
    dispatcher: Dispatcher,
    tracker: ConnectionTracker,
    idle_timeout_s: float | None,
) -> None:
    """Serve one socket accepted elsewhere until it closes (the agent's listeners make
    their connections through the event loop)."""
    loop = asyncio.get_running_loop()
    hub = ConnectionHub(dispatcher, tracker, idle_timeout_s)
    lost: asyncio.Future[None] = loop.create_future()
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: Connection(hub, listener, lost), sock
        )
    except OSError:
        sock.close()
        return
    try:
        await lost
    finally:
        transport.close()
        with anyio.CancelScope(shield=True):
            await hub.tasks.close(0)


class Connection(asyncio.Protocol):
    """One client connection (see the module docstring for the flow).

    At most ``_QUEUE_SIZE`` bytes wait for the connection's task before reading pauses
    (what the peer writes beyond stays in the kernel, charged to its socket buffer); the
    frame budget in :mod:`secretivex.agent.limits` sees unfinished frames. Reading also
    pauses while the kernel and the transport hold more than ``_FLUSH_SIZE`` bytes of
    replies, so a peer that never reads cannot grow the agent's memory.
    """

    # Small per connection: 1,000 idle connections cost a few KiB each in all.
    __slots__ = (
        "_chunks",
        "_ctx",
        "_decoder",
        "_eof",
        "_frame_timer",
        "_held",
        "_hub",
        "_idle_timer",
        "_last_active",
        "_listener",
        "_lost",
        "_on_lost",
        "_queued",
        "_reading_paused",
        "_task",
        "_write_paused",
        "_writer",
        "transport",
    )

    def __init__(
        self,
        hub: ConnectionHub,
        listener: ListenerSpec,
        on_lost: asyncio.Future[None] | None = None,
    ) -> None:
        self._hub = hub
        self._listener = listener
        self._on_lost = on_lost  # set once the connection is closed and released
        self._lost = False
        self.transport: asyncio.Transport | None = None
        self._ctx: ConnectionContext | None = None  # set once admitted
        self._decoder = protocol.FrameDecoder()
        self._held = 0  # this connection's share of tracker.buffered
        self._chunks: list[bytes] = []  # what arrived while the task answered
        self._queued = 0  # their bytes
        self._task: asyncio.Task[None] | None = None
        self._eof = False
        self._reading_paused = False
        self._write_paused = False
        self._writer: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._frame_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0

    # -- admission ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_FLUSH_SIZE)
        ctx = self._admit(transport)
        if ctx is None:
            transport.close()
            return
        self._ctx = ctx
        hub = self._hub
        hub.tracker.connections.add(self)
        hub.dispatcher.metrics.on_connection_open()
        if hub.idle_timeout_s:
            loop = asyncio.get_running_loop()
            self._last_active = loop.time()
            self._idle_timer = loop.call_at(self._last_active + hub.idle_timeout_s, self._idle)

    def _admit(self, transport: asyncio.Transport) -> ConnectionContext | None:
        """The connection's context once its peer and the limits allow it; else None
        (counted, audited and logged)."""
        tracker, listener = self._hub.tracker, self._listener
        metrics = self._hub.dispatcher.metrics
        if tracker.active >= tracker.max_connections:
            # Full: refuse before any other work (the peer check reads /proc).
            metrics.on_connection_rejected("max_connections")
            refusals.warning(
                "max_connections",
                "connection refused on %s: max_connections=%d reached",
                listener.path,
                tracker.max_connections,
            )
            return None
        sock = cast(socket.socket, transport.get_extra_info("socket"))
        try:
            peer = peer_credentials(sock)
        except OSError:
            return None
        tracker.next_id += 1
        ctx = ConnectionContext(listener=listener, peer=peer, conn_id=tracker.next_id, sock=sock)
        if not listener.admits(peer):
            self._record_refusal(ctx, PEER_DENIED)
            refusals.warning(
                PEER_DENIED,
                "refused peer uid=%d gid=%d pid=%d on %s",
                peer.uid,
                peer.gid,
                peer.pid,
                listener.path,
            )
            return None
        reason = tracker.refusal(listener, peer.uid)
        if reason is not None:
            metrics.on_connection_rejected(reason)
            refusals.warning(
                reason,
                "connection refused from uid=%d on %s: %s reached",
                peer.uid,
                listener.path,
                reason,
            )
            return None
        tracker.open(listener, peer.uid)
        return ctx

    def _record_refusal(self, ctx: ConnectionContext, outcome: str) -> None:
        """Count and audit a peer the listener does not (or no longer) admit."""
        dispatcher = self._hub.dispatcher
        dispatcher.metrics.on_connection_rejected(outcome)
        peer = ctx.peer
        dispatcher.audit.record(
            socket=str(ctx.listener.path),
            listener=ctx.listener.name,
            request="connect",
            outcome=outcome,
            peer_uid=peer.uid,
            peer_gid=peer.gid,
            peer_pid=peer.pid,
            peer_exe=ctx.provenance()[0],
        )

    def recheck(self, listeners: frozenset[Path]) -> None:
        """After a reload changed who ``listeners`` admit (or stopped serving them): cut
        this connection if it came through one of them and its socket is gone or no
        longer admits its peer. A request in flight is cancelled (a pending
        confirmation's prompt goes away with it) and nothing more is answered."""
        ctx = self._ctx
        listener = self._listener
        if ctx is None or self._lost or listener.path not in listeners:
            return
        if listener.still_admits(ctx.peer):
            return
        self._record_refusal(ctx, PEER_REVOKED)
        log.warning(
            "reload: closing connection %d from uid=%d pid=%d on %s: %s",
            ctx.conn_id,
            ctx.peer.uid,
            ctx.peer.pid,
            ctx.listener.path,
            "socket removed" if listener.retired else "peer no longer admitted",
        )
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()

    # -- requests -----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        ctx = self._ctx
        if ctx is None or self.transport is None or self.transport.is_closing():
            return
        hub = self._hub
        if hub.idle_timeout_s:
            self._last_active = asyncio.get_running_loop().time()
        if self._task is not None:
            # The task answers these after its current request, in order.
            self._chunks.append(data)
            self._queued += len(data)
            if self._queued >= _QUEUE_SIZE:
                self._update_reading()
            return
        payloads = self._frames(data)
        if not payloads:
            return
        if hub.tracker.draining:
            self.close()  # shutting down: no new requests
        elif len(payloads) == 1:
            reply = hub.dispatcher.answer_now(ctx, payloads[0])
            if isinstance(reply, bytes):
                self._write(reply)
            else:
                self._task = hub.tasks.spawn(self._answer(reply, []))
        else:
            self._task = hub.tasks.spawn(self._answer(None, payloads))

    def _frames(self, data: bytes) -> list[bytes] | None:
        """Cut ``data`` into complete requests, keeping the unfinished frame within the
        shared budget and its deadline; None when the connection was closed for it."""
        ctx = self._ctx
        assert ctx is not None
        hub = self._hub
        held = self._held
        try:
            payloads = self._decoder.feed(data)
        except protocol.FrameError as exc:
            log.info("closing connection %d: %s", ctx.conn_id, exc)
            hub.dispatcher.metrics.on_request("frame", "bad_frame", 0)
            self.close()
            return None
        pending = self._decoder.pending
        if pending == held == 0:
            return payloads  # the usual case: whole requests, nothing left over
        tracker = hub.tracker
        if not tracker.hold_bytes(held, pending):
            hub.dispatcher.metrics.on_request("frame", "buffer_full", 0)
            refusals.warning(
                "buffer_full",
                "closing connection %d on %s (uid=%d): unfinished frames of all "
                "connections would pass max_buffered_bytes=%d",
                ctx.conn_id,
                ctx.listener.path,
                ctx.peer.uid,
                tracker.limits.max_buffered_bytes,
            )
            self.close()
            return None
        self._held = pending
        if pending and (not held or payloads):
            self._start_frame_clock()  # a new frame began
        elif not pending:
            self._stop_frame_clock()
        return payloads

    async def _answer(self, pending: Pending | None, batch: list[bytes]) -> None:
        """Answer what must wait or a pipelined batch, then whatever arrived meanwhile,
        in order."""
        ctx = self._ctx
        assert ctx is not None
        hub = self._hub
        tracker = hub.tracker
        finished = False
        try:
            if pending is not None:
                await self.send(await hub.dispatcher.answer_later(ctx, pending))
            ran_since = time.perf_counter()
            while not tracker.draining:
                if not batch:
                    taken = self._take()
                    if not taken:
                        break
                    batch = taken
                await self._answer_batch(ctx, batch)
                batch = []
                if time.perf_counter() - ran_since >= _YIELD_AFTER_S:
                    # Requests kept arriving without a pause: let other connections run.
                    await anyio.lowlevel.checkpoint()
                    ran_since = time.perf_counter()
            finished = True
        except OSError:  # reset, broken pipe: the peer went away
            pass
        finally:
            self._task = None
            if self._lost:
                self._release()  # the peer left while its request ran
            elif not finished or self._eof or tracker.draining:
                self.close()
            elif hub.idle_timeout_s:
                self._last_active = asyncio.get_running_loop().time()

    def _take(self) -> list[bytes] | None:
        """The requests in what arrived while the task answered (None: the connection
        was closed for a bad or oversized frame)."""
        if not self._chunks or self._lost:
            return []
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._queued = 0
        self._update_reading()
        return self._frames(data)

    async def _answer_batch(self, ctx: ConnectionContext, batch: list[bytes]) -> None:
        """Answer in order, yielding between requests (once the batch ran for
        ``_YIELD_AFTER_S``: a yield costs ~20 us) so one client writing thousands of
        requests at once cannot starve the others; replies go out in bounded chunks."""
        dispatcher = self._hub.dispatcher
        out = bytearray()
        ran_since = time.perf_counter()
        for payload in batch:
            if time.perf_counter() - ran_since >= _YIELD_AFTER_S:
                await anyio.lowlevel.checkpoint()
                ran_since = time.perf_counter()
            out += await dispatcher.handle(ctx, payload)
            if len(out) >= _FLUSH_SIZE:
                await self.send(bytes(out))
                out.clear()
        if out:
            await self.send(bytes(out))

    # -- timers -------------------------------------------------------------------------

    def _idle(self) -> None:
        """The idle timer: closes a connection that asked nothing for the idle timeout
        (re-armed, not reset per request: one timer per idle period)."""
        self._idle_timer = None
        timeout = self._hub.idle_timeout_s
        transport = self.transport
        if not timeout or transport is None or transport.is_closing():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._task is not None or self._held or self._reading_paused:
            # Answering, a frame arriving (it has its own deadline), or replies waiting
            # for the peer to read them: not idle.
            due = now + timeout
        else:
            due = self._last_active + timeout
            if due <= now:
                self.close()
                return
        self._idle_timer = loop.call_at(due, self._idle)

    def _start_frame_clock(self) -> None:
        """The unfinished frame has ``frame_timeout_s`` to finish from now."""
        self._stop_frame_clock()
        timeout = self._hub.tracker.limits.frame_timeout_s
        if timeout is not None:
            self._frame_timer = asyncio.get_running_loop().call_later(timeout, self._frame_expired)

    def _stop_frame_clock(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def _frame_expired(self) -> None:
        self._frame_timer = None
        ctx = self._ctx
        if ctx is None or not self._held or self._reading_paused:
            return
        hub = self._hub
        if not hub.tracker.draining:
            hub.dispatcher.metrics.on_request("frame", "frame_timeout", 0)
            refusals.warning(
                "frame_timeout",
                "closing connection %d on %s (uid=%d): frame not finished within %gs",
                ctx.conn_id,
                ctx.listener.path,
                ctx.peer.uid,
                hub.tracker.limits.frame_timeout_s,
            )
        self.close()

    # -- writing and closing --------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """A reply from the data callback; reading pauses while the peer does not read."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            if self._write_paused:
                self._update_reading()

    async def send(self, data: bytes) -> None:
        """A reply from the connection's task: waits while the peer does not read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise BrokenPipeError("connection closed")
        transport.write(data)
        while self._write_paused and not transport.is_closing():
            self._writer = asyncio.get_running_loop().create_future()
            try:
                await self._writer
            finally:
                self._writer = None

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self._write_paused or self._queued >= _QUEUE_SIZE
        if pause != self._reading_paused:
            self._reading_paused = pause
            # The frame deadline runs only while the agent reads: a peer cannot finish
            # a frame the agent is not reading.
            if pause:
                transport.pause_reading()
                self._stop_frame_clock()
            else:
                transport.resume_reading()
                if self._held:
                    self._start_frame_clock()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)
        self._update_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self._task is None:
            self.close()
        return True  # keep the write side open until the last reply went out

    def drain(self) -> None:
        """Shutdown: close now unless a request is being answered (its task closes)."""
        if self._task is None:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for timer in (self._idle_timer, self._frame_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._frame_timer = None
        if self._writer is not None and not self._writer.done():
            self._writer.set_result(None)
        if self._task is None:
            self._release()
        # else the request still runs: it keeps the connection's slot until it ends,
        # so hanging up and asking again cannot pile up work beyond max_connections.

    def _release(self) -> None:
        """Give back the connection's slot and frame bytes (once)."""
        ctx = self._ctx
        if ctx is not None:
            self._ctx = None
            hub = self._hub
            tracker = hub.tracker
            tracker.hold_bytes(self._held, 0)
            self._held = 0
            tracker.connections.discard(self)
            tracker.close(self._listener, ctx.peer.uid)
            hub.dispatcher.metrics.on_connection_close()
        if self._on_lost is not None and not self._on_lost.done():
            self._on_lost.set_result(None)


class ConnectionTasks:
    """The owner of every request task (a connection has one only while it answers a
    request that must wait, or a pipelined batch).

    Plain asyncio tasks: an anyio task group's per-task bookkeeping (a cancel scope, an
    event and a handle per spawn) was a fifth of the CPU of a connection that asks one
    question. The agent's task group owns this object; :meth:`close` ends every task
    within the shutdown grace period, cancelling what is left.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection task failed", exc_info=task.exception())

    async def close(self, grace_s: float) -> None:
        """Let running requests finish for ``grace_s``, then cancel the rest."""
        with anyio.move_on_after(grace_s):
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        left = set(self._tasks)
        for task in left:
            task.cancel()
        if left:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(left)
