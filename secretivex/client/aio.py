"""Async agent client over a Unix socket (anyio), on the shared protocol codec."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from secretivex.peercred import peer_ids
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
    parse_response_or_raise,
    signature_of,
)
from .errors import (
    AgentConnectionClosed,
    AgentExtensionUnsupported,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
)
from .paths import resolve_socket_path

__all__ = ["AgentClient", "decode_health", "parse_response_or_raise"]


def _deadline(seconds: float | None) -> float:
    return math.inf if seconds is None or seconds <= 0 else seconds


class AgentClient:
    """One connection to an SSH agent; requests on it are serialised.

    Open with ``async with AgentClient.connect(path) as agent:`` or
    ``agent = await AgentClient.connect(path)`` (then ``await agent.aclose()``).
    Every request waits at most ``response_timeout`` seconds for its answer
    (``None`` or 0: forever); a timeout closes the connection, since a late answer
    would be taken for the next request's.
    """

    def __init__(
        self,
        stream: SocketStream,
        path: str = "",
        response_timeout: float | None = DEFAULT_RESPONSE_TIMEOUT,
    ) -> None:
        self._stream = stream
        self.path = path
        self.response_timeout = response_timeout
        self._decoder = FrameDecoder()
        self._pending: list[bytes] = []
        self._lock = anyio.Lock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        response_timeout: float | None = DEFAULT_RESPONSE_TIMEOUT,
    ) -> _Connector:
        """Connect to ``path`` (default: ``SSH_AUTH_SOCK``, then the default socket).

        Raises ``AgentUnavailable`` with a one-line reason when nothing answers.
        """
        return _Connector(cls, str(resolve_socket_path(path)), timeout, response_timeout)

    @classmethod
    async def _open(
        cls, path: str, timeout: float | None, response_timeout: float | None
    ) -> AgentClient:
        try:
            with anyio.fail_after(_deadline(timeout)):
                stream = await anyio.connect_unix(path)
        except TimeoutError as exc:
            raise AgentUnavailable(connect_error_message(path, exc)) from None
        except OSError as exc:
            raise AgentUnavailable(connect_error_message(path, exc)) from None
        return cls(stream, path, response_timeout)

    def peer_pid(self) -> int | None:
        """Pid of the process that listens on the other end (Linux ``SO_PEERCRED``: the
        process that called ``listen()``); None where the kernel does not say."""
        try:
            sock: socket.socket = self._stream.extra(SocketAttribute.raw_socket)
            pid = peer_ids(sock)[0]
        except (AttributeError, OSError, anyio.TypedAttributeLookupError):
            return None
        return pid or None

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._stream.aclose()

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- transport -------------------------------------------------------------------

    async def request(self, message: Request) -> Response:
        """Send one request and return the parsed answer."""
        return parse_response_or_raise(await self.request_raw(encode_request(message)))

    async def request_raw(self, payload: bytes) -> bytes:
        """Send one payload (type byte + body), return the answer payload."""
        wire = frame_request(payload)
        async with self._lock:
            if self._closed:
                raise AgentUnavailable(f"connection to {self.path} is closed")
            try:
                with anyio.fail_after(_deadline(self.response_timeout)):
                    await self._stream.send(wire)
                    return await self._receive()
            except TimeoutError:
                await self.aclose()
                raise AgentTimeout(
                    f"the agent at {self.path} did not answer within {self.response_timeout:g} s"
                ) from None
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
                await self.aclose()
                raise AgentConnectionClosed(
                    f"the agent at {self.path} closed the connection"
                    + (f" ({exc})" if str(exc) else "")
                ) from None
            except ProtocolError as exc:
                await self.aclose()
                raise AgentProtocolError(f"bad framing from the agent: {exc}") from None

    async def _receive(self) -> bytes:
        while not self._pending:
            data = await self._stream.receive()
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    # -- requests --------------------------------------------------------------------

    async def list_identities(self) -> list[AgentIdentity]:
        return identities_of(await self.request(RequestIdentities()))

    async def sign(self, key_blob: bytes, data: bytes, flags: int = 0) -> bytes:
        """Return the signature blob (``string alg || string sig``)."""
        return signature_of(await self.request(SignRequest(bytes(key_blob), bytes(data), flags)))

    async def add_identity(
        self,
        key: Any,
        comment: str | None = None,
        *,
        lifetime: int | None = None,
        confirm: bool = False,
        maxsign: int | None = None,
    ) -> None:
        """Add a private key (``SoftwareKey`` or ``WirePrivateKey``), optionally constrained."""
        message = build_add_identity(
            key, comment, lifetime=lifetime, confirm=confirm, maxsign=maxsign
        )
        check_success(await self.request(message), "add identity")

    async def remove_identity(self, key_blob: bytes) -> None:
        check_success(await self.request(RemoveIdentity(bytes(key_blob))), "remove identity")

    async def remove_all(self) -> None:
        check_success(await self.request(RemoveAllIdentities()), "remove all identities")

    async def lock(self, passphrase: bytes) -> None:
        check_success(await self.request(Lock(passphrase)), "lock")

    async def unlock(self, passphrase: bytes) -> None:
        check_success(await self.request(Unlock(passphrase)), "unlock")

    async def extension(self, name: str, contents: bytes = b"") -> bytes:
        """Run an extension; returns the answer's contents.

        Raises ``AgentExtensionUnsupported`` when the agent answers FAILURE.
        """
        return extension_contents(await self.request(Extension(name, contents)), name)

    async def health(self) -> dict[str, Any] | None:
        """The agent's ``health@secretivex`` document, or None if it has no such extension."""
        try:
            raw = await self.extension(HEALTH_EXTENSION)
        except AgentExtensionUnsupported:
            return None
        return decode_health(raw)


class _Connector:
    """``await AgentClient.connect(...)`` or ``async with AgentClient.connect(...)``."""

    __slots__ = ("_args", "_client", "_cls")

    def __init__(
        self,
        cls: type[AgentClient],
        path: str,
        timeout: float | None,
        response_timeout: float | None,
    ) -> None:
        self._cls = cls
        self._args = (path, timeout, response_timeout)
        self._client: AgentClient | None = None

    def __await__(self) -> Generator[Any, None, AgentClient]:
        return self._cls._open(*self._args).__await__()

    async def __aenter__(self) -> AgentClient:
        self._client = await self._cls._open(*self._args)
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
