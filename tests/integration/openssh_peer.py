"""Helpers for the differential conformance test against OpenSSH's ``ssh-agent``.

Everything a request is made of is built here from raw bytes and ``cryptography``,
never with secretivex's own codec: the two agents are judged by an encoder neither
of them wrote. Replies are reduced to what a client can observe (see ``Observation``).
"""

from __future__ import annotations

import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from harness import verify_ssh_signature

# message numbers (draft-miller-ssh-agent, PROTOCOL.agent)
FAILURE, SUCCESS, IDENTITIES_ANSWER, SIGN_RESPONSE = 5, 6, 12, 14
EXTENSION_RESPONSE, EXTENSION_FAILURE = 29, 28
REQUEST_IDENTITIES, SIGN_REQUEST, ADD_IDENTITY, REMOVE_IDENTITY = 11, 13, 17, 18
REMOVE_ALL, ADD_SMARTCARD, REMOVE_SMARTCARD, LOCK, UNLOCK = 19, 20, 21, 22, 23
ADD_ID_CONSTRAINED, ADD_SMARTCARD_CONSTRAINED, EXTENSION = 25, 26, 27
# SSH1 numbers
SSH1_REQUEST_RSA_IDENTITIES, SSH1_RSA_CHALLENGE, SSH1_ADD_RSA_IDENTITY = 1, 3, 7
SSH1_REMOVE_RSA_IDENTITY, SSH1_REMOVE_ALL_RSA_IDENTITIES = 8, 9

NAMES = {
    FAILURE: "FAILURE",
    SUCCESS: "SUCCESS",
    IDENTITIES_ANSWER: "IDENTITIES_ANSWER",
    SIGN_RESPONSE: "SIGN_RESPONSE",
    EXTENSION_RESPONSE: "EXTENSION_RESPONSE",
    EXTENSION_FAILURE: "EXTENSION_FAILURE",
}

CONSTRAIN_LIFETIME, CONSTRAIN_CONFIRM, CONSTRAIN_MAXSIGN, CONSTRAIN_EXTENSION = 1, 2, 3, 255
SIGN_RSA_SHA2_256, SIGN_RSA_SHA2_512 = 2, 4


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def string(b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return u32(len(b)) + b


def mpint(n: int) -> bytes:
    if n == 0:
        return u32(0)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")  # leading zero when the top bit is set
    return string(raw)


def boolean(v: bool) -> bytes:
    return b"\x01" if v else b"\x00"


def strings(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from(">I", blob, pos)
        out.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


# ------------------------------------------------------------------------------ keys

_CURVES = {
    "nistp256": ec.SECP256R1(),
    "nistp384": ec.SECP384R1(),
    "nistp521": ec.SECP521R1(),
}


@dataclass(frozen=True)
class WireKey:
    """A private key as ``ssh-add`` sends it, and its public blob."""

    name: str
    private_wire: bytes  # key type + fields, without comment
    blob: bytes
    private: object

    def add(self, comment: str = "", constraints: bytes = b"") -> bytes:
        t = ADD_ID_CONSTRAINED if constraints else ADD_IDENTITY
        return bytes((t,)) + self.private_wire + string(comment) + constraints

    def sign(self, data: bytes, flags: int = 0) -> bytes:
        return bytes((SIGN_REQUEST,)) + string(self.blob) + string(data) + u32(flags)

    def remove(self) -> bytes:
        return bytes((REMOVE_IDENTITY,)) + string(self.blob)

    def ssh_signature(self, data: bytes) -> bytes:
        """This key's SSH signature over ``data`` (host keys in session-bind)."""
        assert isinstance(self.private, ed25519.Ed25519PrivateKey)
        return string("ssh-ed25519") + string(self.private.sign(data))


def ed25519_key() -> WireKey:
    k = ed25519.Ed25519PrivateKey.generate()
    pub = k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    seed = k.private_bytes_raw()
    wire = string("ssh-ed25519") + string(pub) + string(seed + pub)
    return WireKey("ed25519", wire, string("ssh-ed25519") + string(pub), k)


def ecdsa_key(curve: str) -> WireKey:
    k = ec.generate_private_key(_CURVES[curve])
    point = k.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    alg = f"ecdsa-sha2-{curve}"
    d = k.private_numbers().private_value
    wire = string(alg) + string(curve) + string(point) + mpint(d)
    return WireKey(curve, wire, string(alg) + string(curve) + string(point), k)


def rsa_key(bits: int = 2048) -> WireKey:
    return _rsa_wire(rsa.generate_private_key(65537, bits), bits)


def rsa_key_unchecked(bits: int) -> WireKey:
    """An RSA key of any size (``cryptography`` makes none under 1024 bits)."""
    if bits >= 1024:
        return rsa_key(bits)
    from cryptography.hazmat.primitives.asymmetric.rsa import (
        RSAPrivateNumbers,
        RSAPublicNumbers,
        rsa_crt_dmp1,
        rsa_crt_dmq1,
        rsa_crt_iqmp,
    )

    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = RSAPrivateNumbers(
        p,
        q,
        d,
        rsa_crt_dmp1(d, p),
        rsa_crt_dmq1(d, q),
        rsa_crt_iqmp(p, q),
        RSAPublicNumbers(e, p * q),
    )
    return _rsa_wire(numbers.private_key(unsafe_skip_rsa_key_validation=True), bits)


def _prime(bits: int) -> int:
    rng = secrets.SystemRandom()
    while True:
        n = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            return n  # Fermat-probable prime: enough for a test key


def _rsa_wire(k: rsa.RSAPrivateKey, bits: int) -> WireKey:
    n = k.private_numbers()
    pub = n.public_numbers
    wire = (
        string("ssh-rsa")
        + mpint(pub.n)
        + mpint(pub.e)
        + mpint(n.d)
        + mpint(n.iqmp)
        + mpint(n.p)
        + mpint(n.q)
    )
    return WireKey(f"rsa{bits}", wire, string("ssh-rsa") + mpint(pub.e) + mpint(pub.n), k)


# ----------------------------------------------------------------------- constraints


def lifetime(seconds: int) -> bytes:
    return bytes((CONSTRAIN_LIFETIME,)) + u32(seconds)


def confirm() -> bytes:
    return bytes((CONSTRAIN_CONFIRM,))


def hop(user: str = "", hostname: str = "", keys: tuple[bytes, ...] = ()) -> bytes:
    body = string(user) + string(hostname) + string(b"")
    for blob in keys:
        body += string(blob) + boolean(False)
    return string(body)


def restrict_destination(*pairs: tuple[bytes, bytes]) -> bytes:
    """``restrict-destination-v00@openssh.com`` with (from hop, to hop) pairs."""
    inner = b"".join(string(f + t + string(b"")) for f, t in pairs)
    return (
        bytes((CONSTRAIN_EXTENSION,))
        + string("restrict-destination-v00@openssh.com")
        + string(inner)
    )


# -------------------------------------------------------------------- other requests


def extension(name: str, contents: bytes = b"") -> bytes:
    return bytes((EXTENSION,)) + string(name) + contents


def session_bind(host: WireKey, session_id: bytes, forwarding: bool, *, bad: bool = False) -> bytes:
    sig = host.ssh_signature(session_id + (b"x" if bad else b""))
    return extension(
        "session-bind@openssh.com",
        string(host.blob) + string(session_id) + string(sig) + boolean(forwarding),
    )


def userauth_request(session_id: bytes, user: str, key: WireKey, host: WireKey) -> bytes:
    """What ssh asks the agent to sign for ``publickey-hostbound-v00@openssh.com``."""
    return (
        string(session_id)
        + b"\x32"
        + string(user)
        + string("ssh-connection")
        + string("publickey-hostbound-v00@openssh.com")
        + boolean(True)
        + string(key.blob[4 : 4 + struct.unpack(">I", key.blob[:4])[0]])
        + string(key.blob)
        + string(host.blob)
    )


def lock(passphrase: bytes) -> bytes:
    return bytes((LOCK,)) + string(passphrase)


def unlock(passphrase: bytes) -> bytes:
    return bytes((UNLOCK,)) + string(passphrase)


LIST = bytes((REQUEST_IDENTITIES,))
REMOVE_ALL_MSG = bytes((REMOVE_ALL,))


# ------------------------------------------------------------------------ the client


def _two_strings(data: bytes, pos: int) -> tuple[bytes, bytes]:
    """The first two strings at ``pos`` (empty when the message is too short)."""
    out = []
    for _ in range(2):
        if pos + 4 > len(data):
            return b"", b""
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out[0], out[1]


@dataclass(frozen=True)
class Observation:
    """What a client can see of one reply."""

    kind: str  # a NAMES value, "TYPE<n>", or "CLOSED"
    identities: tuple[tuple[bytes, bytes], ...] = ()
    signature: str = ""  # "valid:<alg>" or "invalid"
    contents: bytes = b""  # extension response contents

    def __str__(self) -> str:
        if self.kind == IDENTITIES_ANSWER_NAME:
            return f"{self.kind}{[c[:40].decode(errors='replace') for _, c in self.identities]}"
        if self.signature:
            return f"{self.kind}({self.signature})"
        return self.kind


IDENTITIES_ANSWER_NAME = NAMES[IDENTITIES_ANSWER]
CLOSED = Observation("CLOSED")


class Client:
    """One agent connection speaking raw frames."""

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def read_reply(self, sign_data: bytes = b"", blob: bytes = b"") -> Observation:
        head = self._read_exact(4)
        if head is None:
            return CLOSED
        body = self._read_exact(struct.unpack(">I", head)[0])
        if not body:
            return CLOSED
        kind = NAMES.get(body[0], f"TYPE{body[0]}")
        if body[0] == IDENTITIES_ANSWER:
            (count,) = struct.unpack_from(">I", body, 1)
            fields = strings(body[5:])
            assert len(fields) == 2 * count
            return Observation(kind, tuple(zip(fields[::2], fields[1::2], strict=True)))
        if body[0] == SIGN_RESPONSE:
            (sig,) = strings(body[1:])
            try:
                alg = verify_ssh_signature(blob, sign_data, sig)
            except Exception:
                return Observation(kind, signature="invalid")
            return Observation(kind, signature=f"valid:{alg}")
        if body[0] == EXTENSION_RESPONSE:
            return Observation(kind, contents=body[1:])
        return Observation(kind)

    def request(self, payload: bytes) -> Observation:
        """Send one message, read its reply; a sign request's signature is verified."""
        sign_data = blob = b""
        if payload[:1] == bytes((SIGN_REQUEST,)):
            blob, sign_data = _two_strings(payload, 1)
        try:
            self.send_raw(u32(len(payload)) + payload)
        except (BrokenPipeError, ConnectionResetError):
            return CLOSED
        return self.read_reply(sign_data, blob)

    def closed(self) -> bool:
        """Whether the agent has closed this connection (a listing gets no answer)."""
        return self.request(LIST) == CLOSED
