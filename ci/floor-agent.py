"""The least an agent written in Python can do per connection: a measuring probe.

Serves one Ed25519 key (list and sign, nothing else) from uvloop protocol callbacks:
no peer checks, no limits, no policy, no metrics, no task per connection; signs with
libsodium (PyNaCl), as secretivex does. Its CPU per connection, measured with the same
bench, marks how close the real agent can get on one process (docs/performance.md,
"CPU per request"). Not part of the package, never a test dependency.

    python ci/floor-agent.py SOCKET KEYFILE   # an unencrypted OpenSSH Ed25519 key
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from pathlib import Path

import nacl.bindings
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_U32 = struct.Struct(">I")
FAILURE = b"\x00\x00\x00\x01\x05"


def string(value: bytes) -> bytes:
    return _U32.pack(len(value)) + value


class Floor(asyncio.Protocol):
    """One connection: answer every complete frame as it arrives."""

    __slots__ = ("buf", "identities", "secret", "transport")

    def __init__(self, identities: bytes, secret: bytes) -> None:
        self.identities = identities
        self.secret = secret
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while len(buf) >= 4:
            size = _U32.unpack_from(buf)[0]
            if len(buf) < 4 + size:
                break
            self.transport.write(self.answer(buf[4 : 4 + size]))  # type: ignore[attr-defined]
            buf = buf[4 + size :]
        self.buf = buf

    def answer(self, payload: bytes) -> bytes:
        if payload[:1] == b"\x0b":  # request identities
            return self.identities
        if payload[:1] == b"\x0d":  # sign request: blob, data, flags
            blob_len = _U32.unpack_from(payload, 1)[0]
            data_at = 5 + blob_len
            data = payload[data_at + 4 : data_at + 4 + _U32.unpack_from(payload, data_at)[0]]
            signature = nacl.bindings.crypto_sign(data, self.secret)[:64]
            body = b"\x0e" + string(string(b"ssh-ed25519") + string(signature))
            return _U32.pack(len(body)) + body
        return FAILURE


async def serve(path: str, key_file: str) -> None:
    key = serialization.load_ssh_private_key(Path(key_file).read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit("floor-agent: an Ed25519 key is needed")
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    blob = string(b"ssh-ed25519") + string(public)
    body = b"\x0c" + _U32.pack(1) + string(blob) + string(b"floor")
    identities = _U32.pack(len(body)) + body
    secret = seed + public
    listener = socket.socket(socket.AF_UNIX)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(socket.SOMAXCONN)
    loop = asyncio.get_running_loop()
    await loop.create_unix_server(lambda: Floor(identities, secret), sock=listener)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    uvloop.run(serve(sys.argv[1], sys.argv[2]))
