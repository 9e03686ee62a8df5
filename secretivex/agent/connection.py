"""One task per client connection: admit it, read frames, dispatch, write replies.

What one peer can hold is bounded (see :mod:`secretivex.agent.limits`): connection
slots, bytes of unfinished frames and the time to finish a frame. Pipelined requests
yield to other connections between requests."""

from __future__ import annotations

import logging
import socket
import time

import anyio
import anyio.lowlevel
from anyio.abc import SocketAttribute, SocketStream

from secretivex import protocol
from secretivex.agent.audit import PEER_DENIED
from secretivex.agent.dispatcher import ConnectionContext, Dispatcher
from secretivex.agent.limits import ConnectionTracker
from secretivex.agent.listeners import ListenerSpec
from secretivex.agent.throttle import LogThrottle
from secretivex.policy.peer import peer_credentials

log = logging.getLogger(__name__)
refusals = LogThrottle(log)

__all__ = ["ConnectionTracker", "refusals", "serve_connection"]

_READ_SIZE = 64 * 1024
#: Replies of one pipelined batch are flushed once this many bytes are pending.
_FLUSH_SIZE = 64 * 1024
#: A pipelined batch lets other connections run at least this often.
_YIELD_AFTER_S = 0.0005


async def serve_connection(
    stream: SocketStream,
    listener: ListenerSpec,
    dispatcher: Dispatcher,
    tracker: ConnectionTracker,
    idle_timeout_s: float | None,
) -> None:
    metrics = dispatcher.metrics
    async with stream:
        raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
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
        try:
            peer = peer_credentials(raw)
        except OSError:
            return
        tracker.next_id += 1
        ctx = ConnectionContext(listener=listener, peer=peer, conn_id=tracker.next_id, sock=raw)
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
            await _serve_requests(stream, ctx, dispatcher, tracker, idle_timeout_s)
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            ConnectionError,
        ):
            pass
        finally:
            tracker.close(listener, peer.uid)
            metrics.on_connection_close()


async def _serve_requests(
    stream: SocketStream,
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
    try:
        while not tracker.draining:
            with anyio.CancelScope() as wait:
                tracker.idle_scopes.add(wait)
                if held and frame_timeout_s is not None:
                    wait.deadline = frame_deadline
                elif idle_timeout_s:
                    wait.deadline = anyio.current_time() + idle_timeout_s
                try:
                    data = await stream.receive(_READ_SIZE)
                finally:
                    tracker.idle_scopes.discard(wait)
            if wait.cancelled_caught:
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
                await stream.send(await dispatcher.handle(ctx, payloads[0]))
            elif payloads:
                await _answer_pipelined(stream, ctx, dispatcher, payloads)
    finally:
        tracker.hold_bytes(held, 0)


async def _answer_pipelined(
    stream: SocketStream, ctx: ConnectionContext, dispatcher: Dispatcher, payloads: list[bytes]
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
            await stream.send(bytes(out))
            out.clear()
    if out:
        await stream.send(bytes(out))
