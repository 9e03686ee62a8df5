"""What the async and sync clients share: message building and answer checking."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from secretivex.keys.identity import blob_type, fingerprint_sha256
from secretivex.protocol import (
    EXT_HEALTH,
    NO_CONSTRAINTS,
    AddIdentity,
    Constraints,
    ExtensionFailure,
    ExtensionResponse,
    Failure,
    IdentitiesAnswer,
    ProtocolError,
    Response,
    SignResponse,
    Success,
    WirePrivateKey,
    frame,
    parse_response,
)

from .errors import (
    AgentExtensionUnsupported,
    AgentFailure,
    AgentProtocolError,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RESPONSE_TIMEOUT",
    "HEALTH_EXTENSION",
    "AgentIdentity",
    "build_add_identity",
    "can_verify",
    "check_signature",
    "connect_error_message",
    "decode_health",
    "expect",
    "frame_request",
    "parse_response_or_raise",
]

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RESPONSE_TIMEOUT = 30.0

#: Extension the secretivex agent answers with a UTF-8 JSON health document.
HEALTH_EXTENSION = EXT_HEALTH

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """One key the agent lists."""

    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        return fingerprint_sha256(self.blob)

    @property
    def key_type(self) -> str:
        return blob_type(self.blob)

    def __repr__(self) -> str:
        # Readable in test failures: type, fingerprint and comment, not the raw blob.
        return f"AgentIdentity({self.key_type} {self.fingerprint} {self.comment!r})"

    def public_line(self) -> str:
        """``<type> <base64 blob> <comment>``, as in an ``authorized_keys`` line."""
        from base64 import b64encode

        line = f"{self.key_type} {b64encode(self.blob).decode('ascii')}"
        return f"{line} {self.comment}" if self.comment else line

    def as_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "type": self.key_type,
            "comment": self.comment,
            "public_key": self.public_line(),
        }


def expect(response: Response, wanted: type[R], what: str) -> R:
    """Return ``response`` if it is a ``wanted``, else raise the matching client error."""
    if isinstance(response, wanted):
        return response
    if isinstance(response, ExtensionFailure):
        raise AgentFailure(f"{what}: the agent reported an extension failure")
    if isinstance(response, Failure):
        raise AgentFailure(f"{what}: the agent refused (SSH_AGENT_FAILURE)")
    raise AgentProtocolError(f"{what}: unexpected answer {type(response).__name__}")


def identities_of(response: Response) -> list[AgentIdentity]:
    answer = expect(response, IdentitiesAnswer, "list identities")
    return [AgentIdentity(bytes(blob), comment) for blob, comment in answer.identities]


def signature_of(response: Response) -> bytes:
    return expect(response, SignResponse, "sign").signature


def check_success(response: Response, what: str) -> None:
    expect(response, Success, what)


def extension_contents(response: Response, name: str) -> bytes:
    """Contents of an extension answer; unsupported extensions raise the subclass."""
    if isinstance(response, Failure):
        raise AgentExtensionUnsupported(f"the agent does not support extension {name}")
    if isinstance(response, Success):
        return b""
    return expect(response, ExtensionResponse, f"extension {name}").contents


def build_add_identity(
    key: Any,
    comment: str | None = None,
    *,
    lifetime: int | None = None,
    confirm: bool = False,
    maxsign: int | None = None,
) -> AddIdentity:
    """An ADD_IDENTITY message for a ``WirePrivateKey`` or a ``keys`` ``SoftwareKey``."""
    constraints = (
        Constraints(lifetime=lifetime, confirm=confirm, maxsign=maxsign)
        if (lifetime is not None or confirm or maxsign is not None)
        else NO_CONSTRAINTS
    )
    if isinstance(key, WirePrivateKey):
        return AddIdentity(key, comment or "", constraints)
    from secretivex.keys.software import SoftwareKey, key_to_wire

    if not isinstance(key, SoftwareKey):
        raise TypeError("add_identity takes a SoftwareKey or a WirePrivateKey")
    key_type, fields = key_to_wire(key)
    text = key.comment if comment is None else comment
    return AddIdentity(WirePrivateKey(key_type, tuple(fields)), text, constraints)


def can_verify(key_blob: bytes) -> bool:
    """True when :func:`check_signature` can check signatures by this key (Ed25519,
    ECDSA, RSA and certificates of them; not security keys or DSA)."""
    from secretivex.keys import KeyFormatError
    from secretivex.keys.blobs import public_key_from_blob

    try:
        public_key_from_blob(bytes(key_blob))
    except KeyFormatError:
        return False
    return True


def check_signature(key_blob: bytes, data: bytes, flags: int, signature: bytes) -> str:
    """The algorithm of ``signature`` if it is a valid signature of ``data`` by the key in
    ``key_blob`` (a certificate: its certified key), made with the algorithm ``flags``
    asked for (RSA: ``rsa-sha2-256``/``-512``, as OpenSSH's ``sshkey_check_sigtype``).

    ``AgentProtocolError`` otherwise, and for key types this package cannot verify
    (security keys, DSA): the caller decides whether an unchecked signature will do.
    An agent answering for a key other than the one asked for, with a weaker algorithm,
    or with junk is caught here.
    """
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from secretivex.keys import KeyFormatError
    from secretivex.keys.blobs import public_key_from_blob, safe_type_name
    from secretivex.keys.signatures import (
        SSH_AGENT_RSA_SHA2_256,
        SSH_AGENT_RSA_SHA2_512,
        rsa_algorithm_for_flags,
        verify_signature,
    )

    try:
        public = public_key_from_blob(bytes(key_blob))
    except KeyFormatError as exc:
        raise AgentProtocolError(f"cannot verify a signature by this key: {exc}") from None
    algorithm = blob_type(bytes(signature))
    rsa_sha2 = flags & (SSH_AGENT_RSA_SHA2_256 | SSH_AGENT_RSA_SHA2_512)
    if isinstance(public, RSAPublicKey) and rsa_sha2:
        wanted = rsa_algorithm_for_flags(flags)
        if algorithm != wanted:
            raise AgentProtocolError(
                f"the agent answered a {safe_type_name(algorithm)} signature "
                f"where {wanted} was asked for"
            )
    if not verify_signature(bytes(key_blob), bytes(data), bytes(signature)):
        raise AgentProtocolError(
            "the agent's signature does not verify with the requested key "
            f"({fingerprint_sha256(bytes(key_blob))})"
        )
    return algorithm


def connect_error_message(path: str, exc: BaseException) -> str:
    """One line saying why connecting to ``path`` failed."""
    if isinstance(exc, FileNotFoundError):
        reason = "no such socket"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused (no agent listening)"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    elif isinstance(exc, TimeoutError):
        reason = "timed out"
    elif isinstance(exc, OSError) and exc.errno == errno.ENOTSOCK:
        reason = "not a socket"
    elif isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    else:
        reason = str(exc) or type(exc).__name__
    return f"cannot connect to the agent at {path}: {reason}"


def decode_health(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AgentProtocolError("health@secretivex answer is not UTF-8 JSON") from None
    except RecursionError:  # arrays nested thousands deep
        raise AgentProtocolError("health@secretivex answer is nested too deeply") from None
    if not isinstance(data, dict):
        raise AgentProtocolError("health@secretivex answer is not a JSON object")
    return data


def frame_request(payload: bytes) -> bytes:
    """``payload`` with its length prefix; ``ValueError`` (our request, not the agent's
    fault) when it is empty or larger than any agent accepts."""
    try:
        return frame(payload)
    except ProtocolError as exc:
        raise ValueError(f"request too large for an agent: {exc}") from None


def parse_response_or_raise(payload: bytes) -> Response:
    try:
        return parse_response(payload)
    except ProtocolError as exc:
        raise AgentProtocolError(f"malformed answer from the agent: {exc}") from None
