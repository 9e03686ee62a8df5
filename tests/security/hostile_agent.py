"""A hostile SSH agent for client-side tests: a Unix-socket server in a thread whose
answers are whatever the test scripts (bad framing, lies, escapes, silence).

``HostileAgent(path, script)``: ``script(conn, payload)`` is called for each request
payload (type byte + body) read from a connection and writes whatever it likes to
``conn`` (a blocking ``socket.socket``). It may return ``"close"`` to hang up or
``"hang"`` to stop reading and never answer (the connection is closed on exit).
``never_read=True`` accepts connections and never reads from them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sec_b_helpers import (
    SSH_AGENT_IDENTITIES_ANSWER,
    SSH_AGENT_SIGN_RESPONSE,
    string,
    u32,
)

from secretivex.keys.software import SoftwareKey

Script = Callable[[socket.socket, bytes], object]

SSH_AGENT_EXTENSION_RESPONSE = 29


def sstr(data: bytes | str) -> bytes:
    """An SSH string of bytes or of UTF-8 text."""
    return string(data.encode() if isinstance(data, str) else data)


def framed(payload: bytes) -> bytes:
    return u32(len(payload)) + payload


def identities(*keys: tuple[bytes, bytes | str]) -> bytes:
    """A framed IDENTITIES_ANSWER."""
    body = b"".join(sstr(blob) + sstr(comment) for blob, comment in keys)
    return framed(bytes((SSH_AGENT_IDENTITIES_ANSWER,)) + u32(len(keys)) + body)


def sign_response(signature: bytes) -> bytes:
    return framed(bytes((SSH_AGENT_SIGN_RESPONSE,)) + sstr(signature))


def parse_sign_request(payload: bytes) -> tuple[bytes, bytes, int]:
    pos = 1
    (n,) = struct.unpack_from(">I", payload, pos)
    blob = payload[pos + 4 : pos + 4 + n]
    pos += 4 + n
    (n,) = struct.unpack_from(">I", payload, pos)
    data = payload[pos + 4 : pos + 4 + n]
    pos += 4 + n
    (flags,) = struct.unpack_from(">I", payload, pos)
    return blob, data, flags


def new_key(comment: str = "k") -> SoftwareKey:
    return SoftwareKey(Ed25519PrivateKey.generate(), comment)


class HostileAgent:
    def __init__(self, path: Path, script: Script | None = None, *, never_read: bool = False):
        self.path = path
        self.script = script
        self.never_read = never_read
        self.requests: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        self._server.settimeout(0.1)  # so the accept loop sees the stop flag
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> HostileAgent:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self._server.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._conns.append(conn)
            if not self.never_read:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_exact(self, conn: socket.socket, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = conn.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _serve(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            head = self._read_exact(conn, 4)
            if head is None:
                break
            payload = self._read_exact(conn, struct.unpack(">I", head)[0])
            if payload is None:
                break
            self.requests.append(payload)
            try:
                outcome = self.script(conn, payload) if self.script else "hang"
            except OSError:
                break
            if outcome == "close":
                break
            if outcome == "hang":
                self._stop.wait()
                break
        with contextlib.suppress(OSError):
            conn.close()
