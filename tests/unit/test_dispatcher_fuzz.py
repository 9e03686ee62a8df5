"""Any byte string sent to the agent gets a well-formed reply (or a closed connection for
framing errors): never an exception, never a hang. Exercised at the dispatcher and at
the connection loop over a real socket pair."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secretivex import protocol
from secretivex.agent.connection import ConnectionTracker, serve_connection
from secretivex.agent.dispatcher import ConnectionContext, Dispatcher, Limits
from secretivex.agent.listeners import ListenerSpec
from secretivex.keys import SoftwareKey
from secretivex.policy.engine import Policy
from secretivex.policy.peer import PeerCredentials
from secretivex.stores.registry import StoreRegistry

KNOWN_TYPES = [11, 13, 17, 18, 19, 20, 21, 22, 23, 25, 26, 27]


def _dispatcher() -> tuple[Dispatcher, SoftwareKey]:
    registry = StoreRegistry()
    key = SoftwareKey(ed25519.Ed25519PrivateKey.generate(), "fuzz")
    registry.memory.add(key, "fuzz")
    return Dispatcher(registry, Policy(), Limits(4, 1000), allow_add=False), key


def _ctx() -> ConnectionContext:
    spec = ListenerSpec(name="agent", path=Path("/nonexistent/agent.sock"))
    return ConnectionContext(spec, PeerCredentials(os.getpid(), os.getuid(), os.getgid()), 1)


payloads = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.builds(
        lambda t, body: bytes([t]) + body, st.sampled_from(KNOWN_TYPES), st.binary(max_size=300)
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
def test_any_payload_gets_a_parseable_reply(payload: bytes) -> None:
    dispatcher, _ = _dispatcher()

    async def go() -> bytes:
        with anyio.fail_after(5):
            return await dispatcher.handle(_ctx(), payload)

    reply = anyio.run(go)
    (length,) = struct.unpack(">I", reply[:4])
    assert length == len(reply) - 4
    protocol.parse_response(reply[4:])  # a valid agent response, whatever came in


def test_valid_sign_still_works_after_garbage() -> None:
    dispatcher, key = _dispatcher()

    async def go() -> bytes:
        ctx = _ctx()
        await dispatcher.handle(ctx, b"\x0d\x00\x00")
        req = protocol.encode_request(protocol.SignRequest(key.public_blob, b"data", 0))
        return await dispatcher.handle(ctx, req)

    reply = anyio.run(go)
    response = protocol.parse_response(reply[4:])
    assert isinstance(response, protocol.SignResponse)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.binary(max_size=2000), chunk=st.integers(min_value=1, max_value=64))
def test_connection_loop_answers_or_closes(stream: bytes, chunk: int) -> None:
    """Arbitrary bytes over a real socket: the loop ends cleanly, replies are frames."""
    dispatcher, _ = _dispatcher()
    spec = ListenerSpec(name="agent", path=Path("/nonexistent/agent.sock"))

    async def go() -> bytes:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stream_obj = await anyio.abc.SocketStream.from_socket(ours)
        received = bytearray()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    serve_connection, stream_obj, spec, dispatcher, ConnectionTracker(16), None
                )
                client = await anyio.abc.SocketStream.from_socket(theirs)
                async with client:
                    for i in range(0, len(stream), chunk):
                        try:
                            await client.send(stream[i : i + chunk])
                        except (anyio.BrokenResourceError, OSError):
                            break
                    await client.send_eof()
                    while True:
                        try:
                            received += await client.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
        return bytes(received)

    replies = anyio.run(go)
    decoder = protocol.FrameDecoder()
    for payload in decoder.feed(replies):
        protocol.parse_response(payload)
    assert decoder.pending == 0


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
