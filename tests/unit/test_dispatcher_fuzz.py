"""Any byte string sent to the agent gets a well-formed reply (or a closed connection for
framing errors): never an exception, never a hang. Exercised at the dispatcher and at
the connection loop over a real socket pair."""

from __future__ import annotations

import contextlib
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


# One dispatcher (and one connection context) for every example below: garbage must
# leave no state behind that breaks a later valid request. The listener refuses lock
# (and the dispatcher refuses adds/removes), so no random payload can change what a
# signature needs; a session-bind would need a valid host-key signature.
_SHARED: dict[str, object] = {}


def _shared() -> tuple[Dispatcher, SoftwareKey, ConnectionContext]:
    if not _SHARED:
        dispatcher, key = _dispatcher()
        spec = ListenerSpec(name="agent", path=Path("/nonexistent/agent.sock"), allow_lock=False)
        ctx = ConnectionContext(spec, PeerCredentials(os.getpid(), os.getuid(), os.getgid()), 1)
        _SHARED.update(dispatcher=dispatcher, key=key, ctx=ctx)
    return _SHARED["dispatcher"], _SHARED["key"], _SHARED["ctx"]  # type: ignore[return-value]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(payloads, min_size=1, max_size=8), data=st.binary(max_size=200))
def test_valid_sign_still_works_after_garbage(garbage: list[bytes], data: bytes) -> None:
    dispatcher, key, ctx = _shared()

    async def go() -> bytes:
        with anyio.fail_after(5):
            for payload in garbage:
                reply = await dispatcher.handle(ctx, payload)
                protocol.parse_response(reply[4:])
            req = protocol.encode_request(protocol.SignRequest(key.public_blob, data, 0))
            return await dispatcher.handle(ctx, req)

    reply = anyio.run(go)
    response = protocol.parse_response(reply[4:])
    assert isinstance(response, protocol.SignResponse), response
    # Verified with cryptography against the key's own public half, not our verifier.
    public = ed25519.Ed25519PublicKey.from_public_bytes(key.public_blob[-32:])
    alg_len = struct.unpack(">I", response.signature[:4])[0]
    assert response.signature[4 : 4 + alg_len] == b"ssh-ed25519"
    raw = response.signature[4 + alg_len + 4 :]
    public.verify(raw, data)


def _complete_requests(stream: bytes) -> int:
    """Complete frames before the first bad header or the unfinished tail (our own framer)."""
    count, pos = 0, 0
    while len(stream) - pos >= 4:
        (size,) = struct.unpack_from(">I", stream, pos)
        if not 0 < size <= protocol.MAX_MESSAGE_SIZE:
            break
        if len(stream) - pos - 4 < size:
            break
        count += 1
        pos += 4 + size
    return count


# Mostly well-framed requests (valid or not), then maybe a bad header or a cut-off
# frame, then anything: random bytes alone almost never make two frames in a row.
framed_streams = st.builds(
    lambda frames, tail: b"".join(protocol.frame(f) for f in frames) + tail,
    st.lists(payloads, max_size=6),
    st.one_of(
        st.just(b""),
        st.binary(max_size=40),
        st.builds(lambda junk: b"\x00\x00\x00\x00" + junk, st.binary(max_size=20)),
        st.builds(lambda junk: b"\x7f\xff\xff\xff" + junk, st.binary(max_size=20)),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.one_of(framed_streams, st.binary(max_size=2000)),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_connection_loop_answers_or_closes(stream: bytes, chunk: int) -> None:
    """Arbitrary bytes over a real socket: one reply per complete request before the first
    bad frame, the loop ends cleanly, and the next connection is served."""
    dispatcher, key = _dispatcher()
    spec = ListenerSpec(name="agent", path=Path("/nonexistent/agent.sock"), allow_lock=False)
    tracker = ConnectionTracker(16)

    async def converse(data: bytes, step: int) -> bytes:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        received = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_connection, ours, spec, dispatcher, tracker, None)
            client = await anyio.abc.SocketStream.from_socket(theirs)
            async with client:
                for i in range(0, len(data), step):
                    try:
                        await client.send(data[i : i + step])
                    except (anyio.BrokenResourceError, OSError):
                        break
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await client.send_eof()
                while True:
                    try:
                        received += await client.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        break
        return bytes(received)

    async def go() -> tuple[bytes, bytes]:
        with anyio.fail_after(10):
            first = await converse(stream, chunk)
            listing = protocol.frame(protocol.encode_request(protocol.RequestIdentities()))
            second = await converse(listing, len(listing))
        return first, second

    replies, after = anyio.run(go)
    decoder = protocol.FrameDecoder()
    answered = decoder.feed(replies)
    for payload in answered:
        protocol.parse_response(payload)
    assert decoder.pending == 0
    assert len(answered) == _complete_requests(stream)
    assert tracker.active == 0
    listing = protocol.parse_response(protocol.FrameDecoder().feed(after)[0])
    assert isinstance(listing, protocol.IdentitiesAnswer)
    assert [bytes(blob) for blob, _ in listing.identities] == [key.public_blob]


# Unraisable exceptions (an unclosed socket, an exception in a finaliser) fail the test.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
