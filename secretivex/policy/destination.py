"""Destination constraints (``ssh-add -h``) checked against session bindings.

Follows OpenSSH's PROTOCOL.agent and ssh-agent.c semantics: ``ssh`` binds each
connection to the server's host key with ``session-bind@openssh.com``; a key added with
destination constraints may then only sign a userauth request for the most recently
bound session, and only when every hop of the binding chain is permitted by some
constraint ("from" host key → "to" host key, optionally for a user).
"""

from __future__ import annotations

import fnmatch
import time
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from secretivex import protocol
from secretivex.keys.identity import Identity, fingerprint_sha256
from secretivex.protocol.wire import Reader

SSH2_MSG_USERAUTH_REQUEST = 50
HOSTBOUND_METHOD = "publickey-hostbound-v00@openssh.com"


@dataclass(frozen=True, slots=True)
class SessionBinding:
    """One ``session-bind@openssh.com`` a connection received, in order."""

    host_key: bytes
    session_id: bytes
    is_forwarding: bool


@dataclass(frozen=True, slots=True)
class DestinationCheck:
    """The verdict on a signature request under destination constraints."""

    allowed: bool
    reason: str = ""
    destination: str = ""


@dataclass(frozen=True, slots=True)
class UserauthRequest:
    """The fields of an SSH userauth request that destination checks need."""

    session_id: bytes
    user: str
    key_blob: bytes
    host_key: bytes | None


def parse_userauth_request(data: bytes) -> UserauthRequest | None:
    """The data ssh asks us to sign for public-key authentication, or None if it is not."""
    try:
        r = Reader(data)
        session_id = r.read_string()
        if r.read_u8() != SSH2_MSG_USERAUTH_REQUEST:
            return None
        user = r.read_string().decode("utf-8")
        if r.read_string() != b"ssh-connection":
            return None
        method = r.read_string().decode("ascii")
        if method not in ("publickey", HOSTBOUND_METHOD):
            return None
        if not r.read_bool():
            return None
        r.read_string()  # algorithm
        key_blob = r.read_string()
        host_key = r.read_string() if method == HOSTBOUND_METHOD else None
        r.expect_end()
    except (protocol.ProtocolError, UnicodeDecodeError):
        return None
    return UserauthRequest(session_id, user, key_blob, host_key)


def _constraints(ident: Identity) -> list[protocol.DestinationConstraint]:
    out: list[protocol.DestinationConstraint] = []
    for ext in ident.constraints:
        if isinstance(ext, protocol.DestinationConstraints):
            out.extend(ext.constraints)
    return out


def _cert_signed_by(host_key: bytes, ca_blob: bytes, hostname: str) -> bool:
    """A host certificate signed by the CA, valid now, naming ``hostname``."""
    try:
        key_type = host_key[4 : 4 + int.from_bytes(host_key[:4], "big")]
        line = key_type + b" " + b64encode(host_key)
        cert = serialization.load_ssh_public_identity(line)
    except Exception:
        return False
    if not isinstance(cert, serialization.SSHCertificate):
        return False
    if cert.type != serialization.SSHCertificateType.HOST:
        return False
    try:
        cert.verify_cert_signature()
    except Exception:
        return False
    signer = cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if signer.split()[1] != b64encode(ca_blob):
        return False
    now = time.time()
    if not (cert.valid_after <= now < cert.valid_before):
        return False
    principals = [p.decode("utf-8", "replace") for p in cert.valid_principals]
    return not principals or any(fnmatch.fnmatchcase(hostname, p) for p in principals)


def _hop_matches(key: bytes | None, hop: protocol.Hop) -> bool:
    if key is None:
        return False
    for hop_key in hop.keys:
        if hop_key.is_ca:
            if _cert_signed_by(key, hop_key.blob, hop.hostname):
                return True
        elif hop_key.blob == key:
            return True
    return False


def _permitted(
    constraints: Sequence[protocol.DestinationConstraint],
    from_key: bytes | None,
    to_key: bytes | None,
    user: str | None,
) -> str | None:
    """The destination hostname of the first matching constraint, or None."""
    for c in constraints:
        if from_key is None:
            if c.from_hop.hostname or c.from_hop.keys:
                continue  # first hop must start from this (the origin) host
        elif not _hop_matches(from_key, c.from_hop):
            continue
        if to_key is not None and not _hop_matches(to_key, c.to_hop):
            continue
        if c.to_hop.user and user is not None and not fnmatch.fnmatchcase(user, c.to_hop.user):
            continue
        return c.to_hop.hostname or "*"
    return None


def identity_permitted(
    ident: Identity, bindings: Sequence[SessionBinding], user: str | None
) -> DestinationCheck:
    constraints = _constraints(ident)
    if not constraints or not bindings:
        return DestinationCheck(True)
    from_key: bytes | None = None
    destination = ""
    last = len(bindings) - 1
    for i, bind in enumerate(bindings):
        test_user = None
        if i == last:
            test_user = user
            if bind.is_forwarding and user is not None:
                return DestinationCheck(False, "tried to sign on a forwarding hop")
        elif not bind.is_forwarding:
            return DestinationCheck(False, "tried to forward through a signing bind")
        host = _permitted(constraints, from_key, bind.host_key, test_user)
        if host is None:
            return DestinationCheck(
                False, f"hop {i + 1} to host key {fingerprint_sha256(bind.host_key)} not permitted"
            )
        destination = host
        from_key = bind.host_key
    return DestinationCheck(True, destination=destination)


def check_destination(
    ident: Identity, bindings: Sequence[SessionBinding], data: bytes
) -> DestinationCheck:
    """Whether a destination-constrained key may sign ``data`` on this connection."""
    if not _constraints(ident):
        return DestinationCheck(True)
    if not bindings:
        return DestinationCheck(False, "destination-constrained key on an unbound connection")
    request = parse_userauth_request(data)
    if request is None or request.key_blob != ident.blob:
        return DestinationCheck(
            False, "destination-constrained key asked to sign non-userauth data"
        )
    verdict = identity_permitted(ident, bindings, request.user)
    if not verdict.allowed:
        return verdict
    if request.session_id != bindings[-1].session_id:
        return DestinationCheck(False, "session id is not the most recently bound one")
    if len(bindings) > 1 and request.host_key is None:
        return DestinationCheck(False, "no host key in signature request on a forwarded connection")
    if request.host_key is not None and request.host_key != bindings[-1].host_key:
        return DestinationCheck(False, "host key in request differs from the bound host key")
    return DestinationCheck(True, destination=f"user {request.user!r} at {verdict.destination}")


def listing_permitted(ident: Identity, bindings: Sequence[SessionBinding]) -> bool:
    """Whether a bound connection may see this key in a listing, as OpenSSH's
    ``process_request_identities`` decides: every recorded hop must be permitted, and
    when the last hop is a forwarding one the key must also be usable *beyond* that
    host (keys only good for authenticating to it stay hidden). Unconstrained keys and
    unbound (local) connections see everything."""
    constraints = _constraints(ident)
    if not constraints or not bindings:
        return True
    if not identity_permitted(ident, bindings, None).allowed:
        return False
    last = bindings[-1]
    return not last.is_forwarding or _permitted(constraints, last.host_key, None, None) is not None
