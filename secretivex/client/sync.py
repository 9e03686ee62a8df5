"""A small blocking agent client on a plain socket, for scripts and tests."""

from __future__ import annotations

import os
import socket
import time
from types import TracebackType
from typing import Any

from secretivex.protocol import (
    Extension,
    FrameDecoder,
    Lock,
    ProtocolError,
    RemoveAllIdentities,
    RemoveIdentity,
    Request,
    RequestIdentities,
    Response,
    SignRequest,
    Unlock,
    encode_request,
)

from ._common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
    HEALTH_EXTENSION,
    AgentIdentity,
    build_add_identity,
    check_success,
    connect_error_message,
    decode_health,
    extension_contents,
    frame_request,
    identities_of,
    signature_of,
)
from ._common import parse_response_or_raise as _parse
from .errors import (
    AgentConnectionClosed,
    AgentExtensionUnsupported,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
)
from .paths import resolve_socket_path

__all__ = ["SyncAgentClient"]


def _timeout(seconds: float | None) -> float | None:
    return None if seconds is None or seconds <= 0 else seconds


class SyncAgentClient:
    """Blocking twin of ``AgentClient`` (same methods, no ``await``).

    ``with SyncAgentClient.connect(path) as agent: agent.list_identities()``.
    """

    def __init__(
        self,
        sock: socket.socket,
        path: str = "",
        response_timeout: float | None = DEFAULT_RESPONSE_TIMEOUT,
    ) -> None:
        self._sock = sock
        self.path = path
        self.response_timeout = response_timeout
        self._decoder = FrameDecoder()
        self._pending: list[bytes] = []
        self._closed = False

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        response_timeout: float | None = DEFAULT_RESPONSE_TIMEOUT,
    ) -> SyncAgentClient:
        target = str(resolve_socket_path(path))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_timeout(timeout))
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise AgentUnavailable(connect_error_message(target, exc)) from None
        sock.settimeout(_timeout(response_timeout))
        return cls(sock, target, response_timeout)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()

    def __enter__(self) -> SyncAgentClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(self, message: Request) -> Response:
        return _parse(self.request_raw(encode_request(message)))

    def request_raw(self, payload: bytes) -> bytes:
        if self._closed:
            raise AgentUnavailable(f"connection to {self.path} is closed")
        wire = frame_request(payload)
        limit = _timeout(self.response_timeout)
        # One deadline for the whole answer: a socket timeout alone restarts with every
        # byte, so an agent trickling one byte a second would hold us forever.
        deadline = None if limit is None else time.monotonic() + limit
        try:
            self._sock.settimeout(limit)
            self._sock.sendall(wire)
            while not self._pending:
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self._sock.settimeout(remaining)
                data = self._sock.recv(65536)
                if not data:
                    raise AgentConnectionClosed(f"the agent at {self.path} closed the connection")
                self._pending.extend(self._decoder.feed(data))
        except TimeoutError:
            self.close()
            raise AgentTimeout(
                f"the agent at {self.path} did not answer within {self.response_timeout:g} s"
            ) from None
        except OSError as exc:
            self.close()
            raise AgentConnectionClosed(
                f"the agent at {self.path} closed the connection ({exc})"
            ) from None
        except ProtocolError as exc:
            self.close()
            raise AgentProtocolError(f"bad framing from the agent: {exc}") from None
        except AgentProtocolError:
            self.close()
            raise
        return self._pending.pop(0)

    def list_identities(self) -> list[AgentIdentity]:
        return identities_of(self.request(RequestIdentities()))

    def sign(self, key_blob: bytes, data: bytes, flags: int = 0) -> bytes:
        return signature_of(self.request(SignRequest(bytes(key_blob), bytes(data), flags)))

    def add_identity(
        self,
        key: Any,
        comment: str | None = None,
        *,
        lifetime: int | None = None,
        confirm: bool = False,
        maxsign: int | None = None,
    ) -> None:
        message = build_add_identity(
            key, comment, lifetime=lifetime, confirm=confirm, maxsign=maxsign
        )
        check_success(self.request(message), "add identity")

    def remove_identity(self, key_blob: bytes) -> None:
        check_success(self.request(RemoveIdentity(bytes(key_blob))), "remove identity")

    def remove_all(self) -> None:
        check_success(self.request(RemoveAllIdentities()), "remove all identities")

    def lock(self, passphrase: bytes) -> None:
        check_success(self.request(Lock(passphrase)), "lock")

    def unlock(self, passphrase: bytes) -> None:
        check_success(self.request(Unlock(passphrase)), "unlock")

    def extension(self, name: str, contents: bytes = b"") -> bytes:
        return extension_contents(self.request(Extension(name, contents)), name)

    def health(self) -> dict[str, Any] | None:
        try:
            raw = self.extension(HEALTH_EXTENSION)
        except AgentExtensionUnsupported:
            return None
        return decode_health(raw)
