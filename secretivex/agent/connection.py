"""One task per client connection: read frames, dispatch, write replies."""

from __future__ import annotations

import logging
import socket

import anyio
from anyio.abc import SocketAttribute, SocketStream

from secretivex import protocol
from secretivex.agent.dispatcher import ConnectionContext, Dispatcher
from secretivex.agent.listeners import ListenerSpec
from secretivex.policy.peer import peer_credentials

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024


class ConnectionTracker:
    """Counts live connections for ``max_connections`` and lets shutdown drain them."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active = 0
        self.next_id = 0
        self.draining = False
        #: Cancel scopes of connections waiting for their next request (idle).
        self.idle_scopes: set[anyio.CancelScope] = set()

    def drain(self) -> None:
        """Stop reading new requests; requests already being handled finish."""
        self.draining = True
        for scope in list(self.idle_scopes):
            scope.cancel()


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
            metrics.on_connection_rejected("max_connections")
            log.warning(
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
            metrics.on_connection_rejected("peer_denied")
            dispatcher.audit.record(
                socket=str(listener.path),
                listener=listener.name,
                request="connect",
                outcome="peer_denied",
                peer_uid=peer.uid,
                peer_gid=peer.gid,
                peer_pid=peer.pid,
                peer_exe=ctx.provenance()[0],
            )
            log.warning(
                "refused peer uid=%d gid=%d pid=%d on %s",
                peer.uid,
                peer.gid,
                peer.pid,
                listener.path,
            )
            return
        tracker.active += 1
        metrics.on_connection_open()
        decoder = protocol.FrameDecoder()
        try:
            while not tracker.draining:
                with anyio.CancelScope() as idle:
                    tracker.idle_scopes.add(idle)
                    if idle_timeout_s:
                        idle.deadline = anyio.current_time() + idle_timeout_s
                    try:
                        data = await stream.receive(_READ_SIZE)
                    finally:
                        tracker.idle_scopes.discard(idle)
                if idle.cancelled_caught:
                    break  # idle timeout or shutdown
                try:
                    payloads = decoder.feed(data)
                except protocol.FrameError as exc:
                    log.info("closing connection %d: %s", ctx.conn_id, exc)
                    metrics.on_request("frame", "bad_frame", 0)
                    break
                if len(payloads) == 1:
                    await stream.send(await dispatcher.handle(ctx, payloads[0]))
                elif payloads:
                    # Pipelined requests: answer in order, one write for the batch.
                    replies = [await dispatcher.handle(ctx, p) for p in payloads]
                    await stream.send(b"".join(replies))
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            ConnectionError,
        ):
            pass
        finally:
            tracker.active -= 1
            metrics.on_connection_close()
