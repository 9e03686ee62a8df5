"""One task per client connection: admit it, read frames, dispatch, write replies.

What one peer can hold is bounded (see :mod:`secretivex.agent.limits`): connection
slots, bytes of unfinished frames and the time to finish a frame. Pipelined requests
yield to other connections between requests.

The connection reads and writes through an asyncio transport (``Channel``): the event
loop keeps the socket registered and hands over data as it arrives, and a reply is
written straight away. A stream wrapper's per-call checkpoints and cancel scopes, or a
poll registration per wait on a raw socket, were most of the agent's CPU per request
beyond the signature itself (see docs/performance.md)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import anyio
import anyio.lowlevel

from secretivex import protocol
from secretivex.agent.audit import PEER_DENIED
from secretivex.agent.dispatcher import ConnectionContext, Dispatcher
from secretivex.agent.limits import ConnectionTracker
from secretivex.agent.listeners import ListenerSpec
from secretivex.agent.throttle import LogThrottle
from secretivex.policy.peer import peer_credentials

log = logging.getLogger(__name__)
refusals = LogThrottle(log)

__all__ = [
    "Channel",
    "ConnectionTasks",
    "ConnectionTracker",
    "refusals",
    "serve_channel",
    "serve_connection",
]

_READ_SIZE = 64 * 1024
#: Replies of one pipelined batch are flushed once this many bytes are pending.
_FLUSH_SIZE = 64 * 1024
#: A pipelined batch lets other connections run at least this often.
_YIELD_AFTER_S = 0.0005


async def serve_connection(
    sock: socket.socket,
    listener: ListenerSpec,
    dispatcher: Dispatcher,
    tracker: ConnectionTracker,
    idle_timeout_s: float | None,
) -> None:
    """Serve one accepted socket until it closes (the agent's listeners hand over
    connections as channels; this is for a socket accepted elsewhere)."""
    try:
        channel = await Channel.attach(sock)
    except OSError:
        sock.close()
        return
    await serve_channel(channel, listener, dispatcher, tracker, idle_timeout_s)


async def serve_channel(
    channel: Channel,
    listener: ListenerSpec,
    dispatcher: Dispatcher,
    tracker: ConnectionTracker,
    idle_timeout_s: float | None,
) -> None:
    """Admit one connection and answer its requests; always closes it."""
    metrics = dispatcher.metrics
    try:
        if tracker.active >= tracker.max_connections:
            # Full: refuse before any other work (the peer check reads /proc).
            metrics.on_connection_rejected("max_connections")
            refusals.warning(
                "max_connections",
                "connection refused on %s: max_connections=%d reached",
                listener.path,
                tracker.max_connections,
            )
            return
        sock = channel.socket()
        try:
            peer = peer_credentials(sock)
        except OSError:
            return
        tracker.next_id += 1
        ctx = ConnectionContext(listener=listener, peer=peer, conn_id=tracker.next_id, sock=sock)
        if not listener.admits(peer):
            metrics.on_connection_rejected(PEER_DENIED)
            dispatcher.audit.record(
                socket=str(listener.path),
                listener=listener.name,
                request="connect",
                outcome=PEER_DENIED,
                peer_uid=peer.uid,
                peer_gid=peer.gid,
                peer_pid=peer.pid,
                peer_exe=ctx.provenance()[0],
            )
            refusals.warning(
                PEER_DENIED,
                "refused peer uid=%d gid=%d pid=%d on %s",
                peer.uid,
                peer.gid,
                peer.pid,
                listener.path,
            )
            return
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
            return
        tracker.open(listener, peer.uid)
        metrics.on_connection_open()
        try:
            await _serve_requests(channel, ctx, dispatcher, tracker, idle_timeout_s)
        except OSError:  # reset, broken pipe: the peer went away
            pass
        finally:
            tracker.close(listener, peer.uid)
            metrics.on_connection_close()
    finally:
        channel.close()


async def _serve_requests(
    channel: Channel,
    ctx: ConnectionContext,
    dispatcher: Dispatcher,
    tracker: ConnectionTracker,
    idle_timeout_s: float | None,
) -> None:
    metrics = dispatcher.metrics
    frame_timeout_s = tracker.limits.frame_timeout_s
    decoder = protocol.FrameDecoder()
    held = 0  # this connection's share of tracker.buffered
    frame_deadline = 0.0
    ran_since = time.perf_counter()
    try:
        while not tracker.draining:
            data = channel.take()
            if data is None:
                if held and frame_timeout_s is not None:
                    deadline: float | None = frame_deadline
                elif idle_timeout_s:
                    deadline = anyio.current_time() + idle_timeout_s
                else:
                    deadline = None
                tracker.idle.add(channel)
                try:
                    arrived = await channel.readable(deadline)
                finally:
                    tracker.idle.discard(channel)
                if not arrived:
                    if held and not tracker.draining and frame_timeout_s is not None:
                        metrics.on_request("frame", "frame_timeout", 0)
                        refusals.warning(
                            "frame_timeout",
                            "closing connection %d on %s (uid=%d): frame not finished within %gs",
                            ctx.conn_id,
                            ctx.listener.path,
                            ctx.peer.uid,
                            frame_timeout_s,
                        )
                    return  # frame deadline, idle timeout or shutdown
                ran_since = time.perf_counter()
                continue
            if not data:
                return  # the peer closed
            try:
                payloads = decoder.feed(data)
            except protocol.FrameError as exc:
                log.info("closing connection %d: %s", ctx.conn_id, exc)
                metrics.on_request("frame", "bad_frame", 0)
                return
            pending = decoder.pending
            if not tracker.hold_bytes(held, pending):
                metrics.on_request("frame", "buffer_full", 0)
                refusals.warning(
                    "buffer_full",
                    "closing connection %d on %s (uid=%d): unfinished frames of all "
                    "connections would pass max_buffered_bytes=%d",
                    ctx.conn_id,
                    ctx.listener.path,
                    ctx.peer.uid,
                    tracker.limits.max_buffered_bytes,
                )
                return
            if pending and (not held or payloads) and frame_timeout_s is not None:
                frame_deadline = anyio.current_time() + frame_timeout_s  # a new frame began
            held = pending
            if len(payloads) == 1:
                await channel.send(await dispatcher.handle(ctx, payloads[0]))
            elif payloads:
                await _answer_pipelined(channel, ctx, dispatcher, payloads)
            if time.perf_counter() - ran_since >= _YIELD_AFTER_S:
                # Data kept arriving without a wait: let other connections run.
                await anyio.lowlevel.checkpoint()
                ran_since = time.perf_counter()
    finally:
        tracker.hold_bytes(held, 0)


async def _answer_pipelined(
    channel: Channel, ctx: ConnectionContext, dispatcher: Dispatcher, payloads: list[bytes]
) -> None:
    """Answer in order, yielding between requests (once the batch ran for
    ``_YIELD_AFTER_S``: a yield costs ~20 us) so one client writing thousands of
    requests at once cannot starve the others; replies go out in bounded chunks."""
    out = bytearray()
    ran_since = time.perf_counter()
    for payload in payloads:
        if time.perf_counter() - ran_since >= _YIELD_AFTER_S:
            await anyio.lowlevel.checkpoint()
            ran_since = time.perf_counter()
        out += await dispatcher.handle(ctx, payload)
        if len(out) >= _FLUSH_SIZE:
            await channel.send(bytes(out))
            out.clear()
    if out:
        await channel.send(bytes(out))


class Channel(asyncio.Protocol):
    """One connection's transport, read by its task (``on_made`` starts that task).

    At most ``_READ_SIZE`` bytes wait here before reading pauses (what the peer
    writes beyond stays in the kernel, charged to its socket buffer): the frame
    budget in :mod:`secretivex.agent.limits` sees everything else. Writing waits
    while the kernel and the transport hold more than ``_FLUSH_SIZE`` bytes, so a
    peer that never reads cannot grow the agent's memory.
    """

    # Small per connection: 1,000 idle connections cost ~4 KiB each in all.
    __slots__ = (
        "_buffered",
        "_chunks",
        "_eof",
        "_on_made",
        "_paused",
        "_reader",
        "_write_paused",
        "_writer",
        "transport",
    )

    def __init__(self, on_made: Callable[[Channel], None] | None = None) -> None:
        self._on_made = on_made
        self.transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._paused = False
        self._reader: asyncio.Future[bool] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._write_paused = False

    @classmethod
    async def attach(cls, sock: socket.socket) -> Channel:
        loop = asyncio.get_running_loop()
        _, channel = await loop.connect_accepted_socket(cls, sock)
        return channel

    # -- asyncio.Protocol callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_FLUSH_SIZE)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= _READ_SIZE and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the write side open for the last replies

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- the connection task's side ------------------------------------------------------

    def socket(self) -> socket.socket:
        """The connected socket, for its peer credentials and hang-up checks only."""
        assert self.transport is not None
        return cast(socket.socket, self.transport.get_extra_info("socket"))

    def take(self) -> bytes | None:
        """Everything received so far; b"" once the peer closed; None: nothing yet."""
        if self._chunks:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks = []
            self._buffered = 0
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return data
        return b"" if self._eof else None

    async def readable(self, deadline: float | None = None) -> bool:
        """Wait for bytes or the peer's close: False when ``deadline`` (event-loop
        time) passed first or :meth:`stop_waiting` was called (the agent drains).

        A timer on the loop rather than a cancel scope per wait: this runs once per
        request on every connection."""
        if self._chunks or self._eof:
            return True
        loop = asyncio.get_running_loop()
        reader: asyncio.Future[bool] = loop.create_future()
        self._reader = reader
        timer = None if deadline is None else loop.call_at(deadline, _settle, reader, False)
        try:
            return await reader
        finally:
            self._reader = None
            if timer is not None:
                timer.cancel()

    def stop_waiting(self) -> None:
        if self._reader is not None:
            _settle(self._reader, False)

    async def send(self, data: bytes) -> None:
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

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _wake_reader(self) -> None:
        if self._reader is not None:
            _settle(self._reader, True)

    def _wake_writer(self) -> None:
        if self._writer is not None:
            _settle(self._writer, None)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


class ConnectionTasks:
    """The owner of every connection task (one per accepted connection).

    Plain asyncio tasks: an anyio task group's per-task bookkeeping (a cancel scope, an
    event and a handle per spawn) was a fifth of the CPU of a connection that asks one
    question. The agent's task group owns this object; :meth:`close` ends every task
    within the shutdown grace period, cancelling what is left.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

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
