"""Parse and encode agent messages (payloads: type byte + body, no length prefix).

Parsing is strict: every length is bounded, trailing bytes are an error, unknown
key types and constraint extensions are refused (their length is unknowable), and
the only exception raised is :class:`ProtocolError`. Unknown *request* numbers are
not an error: they parse to :class:`UnknownRequest` so the agent answers FAILURE
and keeps the connection, as OpenSSH does.

Text fields: key comments and file paths (smartcard reader id, sk-provider) are
decoded with ``surrogateescape`` so any bytes survive a round trip (comments are not
always UTF-8 in the wild); every other text field (extension and key type names,
PINs, hostnames, users) must be valid UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

from .errors import FrameError, ProtocolError
from .messages import (
    CONSTRAINT_ASSOCIATED_CERTS,
    CONSTRAINT_RESTRICT_DESTINATION,
    CONSTRAINT_SK_PROVIDER,
    KEY_LAYOUTS,
    NO_CONSTRAINTS,
    SSH2_AGENT_FAILURE,
    SSH_AGENT_CONSTRAIN_CONFIRM,
    SSH_AGENT_CONSTRAIN_EXTENSION,
    SSH_AGENT_CONSTRAIN_LIFETIME,
    SSH_AGENT_CONSTRAIN_MAXSIGN,
    SSH_AGENT_EXTENSION_FAILURE,
    SSH_AGENT_EXTENSION_RESPONSE,
    SSH_AGENT_FAILURE,
    SSH_AGENT_IDENTITIES_ANSWER,
    SSH_AGENT_SIGN_RESPONSE,
    SSH_AGENT_SUCCESS,
    SSH_AGENTC_ADD_ID_CONSTRAINED,
    SSH_AGENTC_ADD_IDENTITY,
    SSH_AGENTC_ADD_SMARTCARD_KEY,
    SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED,
    SSH_AGENTC_EXTENSION,
    SSH_AGENTC_LOCK,
    SSH_AGENTC_REMOVE_ALL_IDENTITIES,
    SSH_AGENTC_REMOVE_IDENTITY,
    SSH_AGENTC_REMOVE_SMARTCARD_KEY,
    SSH_AGENTC_REQUEST_IDENTITIES,
    SSH_AGENTC_SIGN_REQUEST,
    SSH_AGENTC_UNLOCK,
    SSH_COM_AGENT2_FAILURE,
    AddIdentity,
    AddSmartcardKey,
    AssociatedCerts,
    ConstraintExtension,
    Constraints,
    DestinationConstraint,
    DestinationConstraints,
    Extension,
    ExtensionFailure,
    ExtensionResponse,
    Failure,
    Hop,
    HopKey,
    IdentitiesAnswer,
    Lock,
    RemoveAllIdentities,
    RemoveIdentity,
    RemoveSmartcardKey,
    Request,
    RequestIdentities,
    Response,
    SessionBind,
    SignRequest,
    SignResponse,
    SkProvider,
    Success,
    UnknownRequest,
    Unlock,
    WirePrivateKey,
)
from .wire import MAX_MESSAGE_SIZE, Reader, boolean, mpint, string, text, text_lossless, u32

__all__ = [
    "encode_constraints",
    "encode_identities_answer",
    "encode_query_reply",
    "encode_request",
    "encode_response",
    "encode_session_bind",
    "encode_sign_response",
    "parse_constraints",
    "parse_query_reply",
    "parse_request",
    "parse_response",
    "parse_session_bind",
]

_U32: Final = struct.Struct(">I")
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from
_FRAME_HEAD: Final = struct.Struct(">IB")  # length, message type
_IDS_HEAD: Final = struct.Struct(">IBI")  # length, message type, key count

_REQUEST_IDENTITIES: Final = RequestIdentities()
_REMOVE_ALL: Final = RemoveAllIdentities()
_FAILURE: Final = Failure()
_SUCCESS: Final = Success()
_EXTENSION_FAILURE: Final = ExtensionFailure()

# =================================================================== private keys


def _read_private_key(r: Reader) -> WirePrivateKey:
    key_type = r.read_text()
    layout = KEY_LAYOUTS.get(key_type)
    if layout is None:
        raise ProtocolError(f"unsupported private key type {key_type[:64]!r}")
    fields: list[bytes | int] = []
    append = fields.append
    for _name, kind in layout:
        if kind == "s":
            append(r.read_string())
        elif kind == "m":
            append(r.read_mpint())
        else:
            append(r.read_u8())
    return WirePrivateKey(key_type, tuple(fields))


def _encode_private_key(key: WirePrivateKey, parts: list[bytes]) -> None:
    layout = KEY_LAYOUTS.get(key.key_type)
    if layout is None:
        raise ProtocolError(f"unsupported private key type {key.key_type[:64]!r}")
    fields = key.fields
    if len(fields) != len(layout):
        raise ProtocolError(f"{key.key_type} needs {len(layout)} key fields, got {len(fields)}")
    parts.append(text(key.key_type))
    for (name, kind), value in zip(layout, fields, strict=True):
        if kind == "s":
            if not isinstance(value, bytes):
                raise ProtocolError(f"{key.key_type} field {name} must be bytes")
            parts.append(_pack_u32(len(value)))
            parts.append(value)
        elif isinstance(value, bytes | bool):
            raise ProtocolError(f"{key.key_type} field {name} must be an int")
        elif kind == "m":
            parts.append(mpint(value))
        else:
            if not 0 <= value <= 0xFF:
                raise ProtocolError(f"{key.key_type} field {name} must fit in a byte")
            parts.append(bytes((value,)))


# ==================================================================== constraints


def _read_hop(r: Reader) -> Hop:
    user = r.read_text()
    hostname = r.read_text()
    if r.read_sub().remaining:
        raise ProtocolError("destination hop: reserved field is not empty")
    keys: list[HopKey] = []
    while not r.at_end():
        blob = r.read_string()
        keys.append(HopKey(blob, r.read_bool()))
    return Hop(user, hostname, tuple(keys))


def _read_destination_constraints(r: Reader) -> DestinationConstraints:
    outer = r.read_sub()
    items: list[DestinationConstraint] = []
    while not outer.at_end():
        one = outer.read_sub()
        from_hop = _read_hop(one.read_sub())
        to_hop = _read_hop(one.read_sub())
        if one.read_sub().remaining:
            raise ProtocolError("destination constraint: reserved field is not empty")
        one.expect_end()
        items.append(DestinationConstraint(from_hop, to_hop))
    return DestinationConstraints(tuple(items))


def _encode_hop(hop: Hop) -> bytes:
    parts = [text(hop.user), text(hop.hostname), b"\x00\x00\x00\x00"]
    for key in hop.keys:
        parts.append(string(key.blob))
        parts.append(boolean(key.is_ca))
    return string(b"".join(parts))


def _encode_constraint_extension(ext: ConstraintExtension) -> bytes:
    if isinstance(ext, DestinationConstraints):
        inner = b"".join(
            string(_encode_hop(c.from_hop) + _encode_hop(c.to_hop) + b"\x00\x00\x00\x00")
            for c in ext.constraints
        )
        body = string(inner)
    elif isinstance(ext, AssociatedCerts):
        body = boolean(ext.certs_only) + string(ext.certs)
    elif isinstance(ext, SkProvider):
        body = text_lossless(ext.path)
    else:  # pragma: no cover - guarded by the type checker
        raise ProtocolError(f"not a constraint extension: {type(ext).__name__}")
    return b"\xff" + text(ext.NAME) + body


def parse_constraints(data: bytes) -> Constraints:
    """Inverse of :func:`encode_constraints` (e.g. for constraints a store kept as bytes)."""
    return _read_constraints(Reader(data))


def _read_constraints(r: Reader) -> Constraints:
    """Key constraints up to the reader's end; each kind at most once (as OpenSSH)."""
    if r.at_end():
        return NO_CONSTRAINTS
    lifetime: int | None = None
    confirm = False
    maxsign: int | None = None
    extensions: list[ConstraintExtension] = []
    seen: set[str] = set()
    while not r.at_end():
        kind = r.read_u8()
        if kind == SSH_AGENT_CONSTRAIN_LIFETIME:
            if lifetime is not None:
                raise ProtocolError("lifetime constraint given twice")
            lifetime = r.read_u32()
        elif kind == SSH_AGENT_CONSTRAIN_CONFIRM:
            if confirm:
                raise ProtocolError("confirm constraint given twice")
            confirm = True
        elif kind == SSH_AGENT_CONSTRAIN_MAXSIGN:
            if maxsign is not None:
                raise ProtocolError("maxsign constraint given twice")
            maxsign = r.read_u32()
        elif kind == SSH_AGENT_CONSTRAIN_EXTENSION:
            name = r.read_text()
            if name in seen:
                raise ProtocolError(f"constraint {name} given twice")
            seen.add(name)
            ext: ConstraintExtension
            if name == CONSTRAINT_RESTRICT_DESTINATION:
                ext = _read_destination_constraints(r)
            elif name == CONSTRAINT_ASSOCIATED_CERTS:
                certs_only = r.read_bool()
                ext = AssociatedCerts(certs_only, r.read_string())
            elif name == CONSTRAINT_SK_PROVIDER:
                ext = SkProvider(r.read_text_lossless())
            else:
                # No length follows the name, so an unknown one cannot be skipped.
                raise ProtocolError(f"unsupported constraint extension {name[:64]!r}")
            extensions.append(ext)
        else:
            raise ProtocolError(f"unknown constraint type {kind}")
    return Constraints(lifetime, confirm, maxsign, tuple(extensions))


def encode_constraints(constraints: Constraints) -> bytes:
    """Wire form of ``constraints`` (empty bytes when there are none)."""
    if constraints.is_empty:
        return b""
    parts: list[bytes] = []
    if constraints.lifetime is not None:
        parts.append(b"\x01" + u32(constraints.lifetime))
    if constraints.confirm:
        parts.append(b"\x02")
    if constraints.maxsign is not None:
        parts.append(b"\x03" + u32(constraints.maxsign))
    seen: set[str] = set()
    for ext in constraints.extensions:
        if ext.NAME in seen:
            raise ProtocolError(f"constraint {ext.NAME} given twice")
        seen.add(ext.NAME)
        parts.append(_encode_constraint_extension(ext))
    return b"".join(parts)


# ======================================================================= requests


def _parse_request_identities(r: Reader, _t: int) -> Request:
    return _REQUEST_IDENTITIES


def _parse_sign_request(r: Reader, _t: int) -> Request:
    key_blob = r.read_string()
    data = r.read_string()
    return SignRequest(key_blob, data, r.read_u32())


def _parse_add_identity(r: Reader, _t: int) -> Request:
    # OpenSSH reads constraints after either number (17 or 25); so do we.
    key = _read_private_key(r)
    comment = r.read_text_lossless()
    return AddIdentity(key, comment, _read_constraints(r))


def _parse_remove_identity(r: Reader, _t: int) -> Request:
    return RemoveIdentity(r.read_string())


def _parse_remove_all(r: Reader, _t: int) -> Request:
    return _REMOVE_ALL


def _parse_add_smartcard(r: Reader, _t: int) -> Request:
    reader_id = r.read_text_lossless()
    pin = r.read_text()
    return AddSmartcardKey(reader_id, pin, _read_constraints(r))


def _parse_remove_smartcard(r: Reader, _t: int) -> Request:
    reader_id = r.read_text_lossless()
    return RemoveSmartcardKey(reader_id, r.read_text())


def _parse_lock(r: Reader, t: int) -> Request:
    passphrase = r.read_string()
    return Lock(passphrase) if t == SSH_AGENTC_LOCK else Unlock(passphrase)


def _parse_extension(r: Reader, _t: int) -> Request:
    name = r.read_text()
    return Extension(name, r.read_rest())


_REQUEST_PARSERS: Final[dict[int, Callable[[Reader, int], Request]]] = {
    SSH_AGENTC_REQUEST_IDENTITIES: _parse_request_identities,
    SSH_AGENTC_SIGN_REQUEST: _parse_sign_request,
    SSH_AGENTC_ADD_IDENTITY: _parse_add_identity,
    SSH_AGENTC_ADD_ID_CONSTRAINED: _parse_add_identity,
    SSH_AGENTC_REMOVE_IDENTITY: _parse_remove_identity,
    SSH_AGENTC_REMOVE_ALL_IDENTITIES: _parse_remove_all,
    SSH_AGENTC_ADD_SMARTCARD_KEY: _parse_add_smartcard,
    SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED: _parse_add_smartcard,
    SSH_AGENTC_REMOVE_SMARTCARD_KEY: _parse_remove_smartcard,
    SSH_AGENTC_LOCK: _parse_lock,
    SSH_AGENTC_UNLOCK: _parse_lock,
    SSH_AGENTC_EXTENSION: _parse_extension,
}


def _fast_sign_request(payload: bytes) -> SignRequest | None:
    """The hot path without a Reader; ``None`` lets the general path report the error."""
    end = len(payload)
    if end < 5:
        return None
    a = 5 + _unpack_u32(payload, 1)[0]
    if a + 4 > end:
        return None
    b = a + 4 + _unpack_u32(payload, a)[0]
    if b + 4 != end:
        return None
    flags: int = _unpack_u32(payload, b)[0]
    return SignRequest(payload[5:a], payload[a + 4 : b], flags)


def parse_request(payload: bytes | bytearray | memoryview) -> Request:
    """Parse one client->agent payload (type byte + body, without the length)."""
    if not payload:
        raise ProtocolError("empty message")
    msg_type = payload[0]
    if msg_type == SSH_AGENTC_SIGN_REQUEST and type(payload) is bytes:
        fast = _fast_sign_request(payload)
        if fast is not None:
            return fast
    r = Reader(payload, 1)
    parser = _REQUEST_PARSERS.get(msg_type)
    if parser is None:
        return UnknownRequest(msg_type, r.read_rest())
    msg = parser(r, msg_type)
    r.expect_end()
    return msg


def _encode_sign_request(m: SignRequest) -> bytes:
    kb = m.key_blob
    data = m.data
    return b"".join((b"\x0d", _pack_u32(len(kb)), kb, _pack_u32(len(data)), data, u32(m.flags)))


def _encode_add_identity(m: AddIdentity) -> bytes:
    constraints = encode_constraints(m.constraints)
    parts = [b"\x19" if constraints else b"\x11"]
    _encode_private_key(m.key, parts)
    parts.append(text_lossless(m.comment))
    parts.append(constraints)
    return b"".join(parts)


def _encode_add_smartcard(m: AddSmartcardKey) -> bytes:
    constraints = encode_constraints(m.constraints)
    head = b"\x1a" if constraints else b"\x14"
    return head + text_lossless(m.reader_id) + text(m.pin) + constraints


def _encode_unknown(m: UnknownRequest) -> bytes:
    if not 0 <= m.msg_type <= 0xFF:
        raise ProtocolError("message type out of range")
    return bytes((m.msg_type,)) + m.body


def _encode_remove_smartcard(m: RemoveSmartcardKey) -> bytes:
    return b"\x15" + text_lossless(m.reader_id) + text(m.pin)


# Keyed by exact type: a dict lookup beats an isinstance chain on the hot path.
_REQUEST_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    RequestIdentities: lambda m: b"\x0b",
    SignRequest: _encode_sign_request,
    AddIdentity: _encode_add_identity,
    RemoveIdentity: lambda m: b"\x12" + string(m.key_blob),
    RemoveAllIdentities: lambda m: b"\x13",
    AddSmartcardKey: _encode_add_smartcard,
    RemoveSmartcardKey: _encode_remove_smartcard,
    Lock: lambda m: b"\x16" + string(m.passphrase),
    Unlock: lambda m: b"\x17" + string(m.passphrase),
    Extension: lambda m: b"\x1b" + text(m.name) + m.contents,
    UnknownRequest: _encode_unknown,
}


def encode_request(msg: Request) -> bytes:
    """Payload (type byte + body) for a request; see :func:`frame` for the length."""
    encoder = _REQUEST_ENCODERS.get(type(msg))
    if encoder is None:
        raise ProtocolError(f"not a request message: {type(msg).__name__}")
    return encoder(msg)


# ====================================================================== responses


def _parse_identities(r: Reader) -> IdentitiesAnswer:
    count = r.read_u32()
    # Each entry takes at least 8 bytes: refuse absurd counts before looping.
    if count > r.remaining // 8:
        raise ProtocolError(f"identities answer claims {count} keys in {r.remaining} bytes")
    identities = []
    for _ in range(count):
        blob = r.read_string()
        identities.append((blob, r.read_text_lossless()))
    return IdentitiesAnswer(tuple(identities))


def parse_response(payload: bytes | bytearray | memoryview) -> Response:
    """Parse one agent->client payload (type byte + body, without the length)."""
    if not payload:
        raise ProtocolError("empty message")
    r = Reader(payload, 1)
    msg_type = payload[0]
    msg: Response
    if msg_type == SSH_AGENT_SIGN_RESPONSE:
        msg = SignResponse(r.read_string())
    elif msg_type == SSH_AGENT_IDENTITIES_ANSWER:
        msg = _parse_identities(r)
    elif msg_type == SSH_AGENT_SUCCESS:
        msg = _SUCCESS
    elif msg_type == SSH_AGENT_FAILURE:
        msg = _FAILURE
    elif msg_type == SSH_AGENT_EXTENSION_FAILURE:
        msg = _EXTENSION_FAILURE
    elif msg_type == SSH_AGENT_EXTENSION_RESPONSE:
        name = r.read_text()
        msg = ExtensionResponse(name, r.read_rest())
    elif msg_type in (SSH2_AGENT_FAILURE, SSH_COM_AGENT2_FAILURE):
        # Legacy failure codes carry vendor-specific bodies; OpenSSH ignores them too.
        return _FAILURE
    else:
        raise ProtocolError(f"unknown response type {msg_type}")
    r.expect_end()
    return msg


def _encode_identities(m: IdentitiesAnswer) -> bytes:
    parts = [b"\x0c", _pack_u32(len(m.identities))]
    for blob, comment in m.identities:
        parts.append(_pack_u32(len(blob)))
        parts.append(blob)
        parts.append(text_lossless(comment))
    return b"".join(parts)


_RESPONSE_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    Failure: lambda m: b"\x05",
    Success: lambda m: b"\x06",
    IdentitiesAnswer: _encode_identities,
    SignResponse: lambda m: b"\x0e" + string(m.signature),
    ExtensionFailure: lambda m: b"\x1c",
    ExtensionResponse: lambda m: b"\x1d" + text(m.name) + m.contents,
}


def encode_response(msg: Response) -> bytes:
    """Payload (type byte + body) for a response; see :func:`frame` for the length."""
    encoder = _RESPONSE_ENCODERS.get(type(msg))
    if encoder is None:
        raise ProtocolError(f"not a response message: {type(msg).__name__}")
    return encoder(msg)


# ================================================================ hot-path frames


def _lossless(value: bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError("comment holds unencodable surrogates") from None


def encode_sign_response(signature: bytes) -> bytes:
    """Complete frame (with length) of SSH_AGENT_SIGN_RESPONSE: one join, no dataclass."""
    size = len(signature)
    if size > MAX_MESSAGE_SIZE - 5:
        raise FrameError("signature too large for one agent message")
    return _FRAME_HEAD.pack(size + 5, SSH_AGENT_SIGN_RESPONSE) + _pack_u32(size) + signature


def encode_identities_answer(identities: Iterable[tuple[bytes, bytes | str]]) -> bytes:
    """Complete frame (with length) of SSH_AGENT_IDENTITIES_ANSWER.

    Comments may be ``bytes`` (sent as is) or ``str`` (encoded losslessly, see module
    doc), so a server can cache encoded comments.
    """
    parts: list[bytes] = [b""]
    append = parts.append
    total = 5  # message type + key count
    count = 0
    for blob, comment in identities:
        raw = comment if type(comment) is bytes else _lossless(comment)
        append(_pack_u32(len(blob)))
        append(blob)
        append(_pack_u32(len(raw)))
        append(raw)
        total += 8 + len(blob) + len(raw)
        count += 1
    if total > MAX_MESSAGE_SIZE:
        raise FrameError(f"identities answer of {total} bytes exceeds {MAX_MESSAGE_SIZE}")
    parts[0] = _IDS_HEAD.pack(total, SSH_AGENT_IDENTITIES_ANSWER, count)
    return b"".join(parts)


# ================================================================ typed extensions


def parse_session_bind(contents: bytes) -> SessionBind:
    """Contents of a ``session-bind@openssh.com`` :class:`Extension` request."""
    r = Reader(contents)
    host_key = r.read_string()
    session_id = r.read_string()
    signature = r.read_string()
    bind = SessionBind(host_key, session_id, signature, r.read_bool())
    r.expect_end()
    return bind


def encode_session_bind(bind: SessionBind) -> bytes:
    """Inverse of :func:`parse_session_bind` (the contents, not the whole message)."""
    return (
        string(bind.host_key)
        + string(bind.session_id)
        + string(bind.signature)
        + boolean(bind.is_forwarding)
    )


def parse_query_reply(contents: bytes) -> tuple[str, ...]:
    """Extension names in the contents of a ``query`` :class:`ExtensionResponse`.

    RFC 9987 / OpenSSH: ``string "query"`` (the response name) then one string per
    supported extension, to the end of the message (no count).
    """
    r = Reader(contents)
    names: list[str] = []
    while not r.at_end():
        names.append(r.read_text())
    return tuple(names)


def encode_query_reply(names: Iterable[str]) -> bytes:
    """Contents for ``ExtensionResponse("query", ...)`` listing ``names``."""
    return b"".join(text(name) for name in names)
