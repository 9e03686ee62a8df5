"""Public-key blobs, certificates and their text forms.

A *blob* is the SSH wire encoding of a public key (RFC 4253 section 6.6) or of an
OpenSSH certificate (PROTOCOL.certkeys). Blobs are what the agent protocol lists and
what clients ask to sign with, so every store needs to build and read them.
Certificates are parsed by ``cryptography``; plain keys by the few lines below, so
that the checks match OpenSSH's (uncompressed EC points, RSA size bounds).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
    SSHCertificateType,
    load_ssh_public_identity,
)

from secretivex.keys._wire import Reader, WireError, mpint, string
from secretivex.keys.errors import KeyFormatError
from secretivex.keys.identity import fingerprint_sha256

PublicKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey: TypeAlias = Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

ED25519 = "ssh-ed25519"
RSA = "ssh-rsa"
CERT_SUFFIX = "-cert-v01@openssh.com"

#: OpenSSH's bounds (SSH_RSA_MINIMUM_MODULUS_SIZE, SSHBUF_MAX_BIGNUM).
RSA_MIN_BITS = 1024
RSA_MAX_BITS = 16384


@dataclass(frozen=True, slots=True)
class Curve:
    """One NIST curve as SSH names it, with the hash its signatures use (RFC 5656)."""

    ssh_name: str
    key_type: str
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]


_CURVE_LIST = (
    Curve("nistp256", "ecdsa-sha2-nistp256", ec.SECP256R1, hashes.SHA256),
    Curve("nistp384", "ecdsa-sha2-nistp384", ec.SECP384R1, hashes.SHA384),
    Curve("nistp521", "ecdsa-sha2-nistp521", ec.SECP521R1, hashes.SHA512),
)
CURVES_BY_KEY_TYPE: dict[str, Curve] = {c.key_type: c for c in _CURVE_LIST}
#: Keyed by ``cryptography``'s curve name (``secp256r1``...).
CURVES_BY_NAME: dict[str, Curve] = {c.curve().name: c for c in _CURVE_LIST}

PLAIN_KEY_TYPES: frozenset[str] = frozenset({ED25519, RSA, *CURVES_BY_KEY_TYPE})
CERT_KEY_TYPES: frozenset[str] = frozenset(t + CERT_SUFFIX for t in PLAIN_KEY_TYPES)
SUPPORTED_KEY_TYPES: frozenset[str] = PLAIN_KEY_TYPES | CERT_KEY_TYPES


def plain_key_type(key_type: str) -> str:
    """``ssh-ed25519-cert-v01@openssh.com`` -> ``ssh-ed25519``; plain types unchanged."""
    return key_type.removesuffix(CERT_SUFFIX)


def is_certificate_type(key_type: str) -> bool:
    return key_type.endswith(CERT_SUFFIX)


def safe_type_name(key_type: str | bytes) -> str:
    """A key type name fit for a log line: printable ASCII, bounded length."""
    if isinstance(key_type, bytes):
        key_type = key_type.decode("ascii", "replace")
    cleaned = "".join(ch if 32 < ord(ch) < 127 else "?" for ch in key_type[:80])
    return cleaned or "(empty)"


def blob_key_type(blob: bytes) -> str:
    """The key type named at the start of a blob; ``KeyFormatError`` if malformed."""
    try:
        raw = Reader(blob).string()
        return raw.decode("ascii")
    except (WireError, UnicodeDecodeError):
        raise KeyFormatError("malformed public key blob") from None


def encode_public_blob(public_key: PublicKey) -> bytes:
    """The SSH blob of a ``cryptography`` public key (Ed25519, ECDSA P-256/384/521, RSA).

    ``KeyFormatError`` (a ``ValueError``) for other key kinds or curves, so token
    stores can skip them.
    """
    if isinstance(public_key, Ed25519PublicKey):
        return string(ED25519.encode()) + string(public_key.public_bytes_raw())
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = CURVES_BY_NAME.get(public_key.curve.name)
        if curve is None:
            raise KeyFormatError(f"unsupported elliptic curve {public_key.curve.name}")
        point = public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return string(curve.key_type.encode()) + string(curve.ssh_name.encode()) + string(point)
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return string(RSA.encode()) + mpint(numbers.e) + mpint(numbers.n)
    raise KeyFormatError(f"unsupported public key kind {type(public_key).__name__}")


def public_key_from_blob(blob: bytes) -> PublicKey:
    """The ``cryptography`` public key in a blob; for a certificate, the certified key.

    ``KeyFormatError`` (a ``ValueError``) for malformed blobs and unsupported types
    (DSA, security keys).
    """
    key_type = blob_key_type(blob)
    if is_certificate_type(key_type):
        return load_certificate(blob).public_key()
    try:
        reader = Reader(blob)
        reader.string()
        key = _read_plain_public(key_type, reader)
        reader.expect_end()
    except WireError:
        raise KeyFormatError(f"malformed {safe_type_name(key_type)} public key blob") from None
    except KeyFormatError:
        raise
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFormatError(f"invalid {safe_type_name(key_type)} public key") from None
    return key


def _read_plain_public(key_type: str, reader: Reader) -> PublicKey:
    if key_type == ED25519:
        raw = reader.string()
        if len(raw) != 32:
            raise WireError("bad Ed25519 key length")
        return Ed25519PublicKey.from_public_bytes(raw)
    curve = CURVES_BY_KEY_TYPE.get(key_type)
    if curve is not None:
        if reader.string() != curve.ssh_name.encode():
            raise WireError("curve name does not match key type")
        point = reader.string()
        if not point or point[0] != 4:  # OpenSSH accepts only uncompressed points
            raise WireError("EC point not uncompressed")
        return ec.EllipticCurvePublicKey.from_encoded_point(curve.curve(), point)
    if key_type == RSA:
        e = reader.mpint()
        n = reader.mpint()
        check_rsa_bits(n.bit_length())
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise KeyFormatError(f"unsupported key type {safe_type_name(key_type)}")


def check_rsa_bits(bits: int) -> None:
    """Refuse RSA moduli OpenSSH refuses (too weak or too big to be a real key)."""
    if bits < RSA_MIN_BITS:
        raise KeyFormatError(f"RSA key too small ({bits} bits, minimum {RSA_MIN_BITS})")
    if bits > RSA_MAX_BITS:
        raise KeyFormatError(f"RSA key too large ({bits} bits, maximum {RSA_MAX_BITS})")


def load_certificate(blob: bytes) -> SSHCertificate:
    """Parse an OpenSSH certificate blob (without checking the CA signature).

    ``KeyFormatError`` if malformed or of an unsupported type.
    """
    key_type = blob_key_type(blob)
    if key_type not in CERT_KEY_TYPES:
        raise KeyFormatError(f"unsupported certificate type {safe_type_name(key_type)}")
    line = key_type.encode() + b" " + binascii.b2a_base64(blob, newline=False)
    try:
        cert = load_ssh_public_identity(line)
    except (ValueError, TypeError, UnsupportedAlgorithm, NotImplementedError):
        raise KeyFormatError(f"malformed {key_type} certificate") from None
    if not isinstance(cert, SSHCertificate):  # pragma: no cover - type checked above
        raise KeyFormatError(f"malformed {key_type} certificate")
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        check_rsa_bits(key.key_size)
    return cert


def verified_certificate(blob: bytes) -> SSHCertificate:
    """Parse a certificate and check its CA signature, as OpenSSH does when it loads one."""
    cert = load_certificate(blob)
    try:
        cert.verify_cert_signature()
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFormatError("certificate signature does not verify") from None
    return cert


def certified_key_blob(cert: SSHCertificate) -> bytes:
    """The plain blob of the key a certificate certifies."""
    return encode_public_blob(cert.public_key())


def openssh_public_line(blob: bytes, comment: str) -> str:
    """``type base64 comment`` exactly as ``ssh-add -L`` prints it.

    Like ``ssh-add -L`` the separator before the comment is always written, so an
    empty comment leaves a trailing space.
    """
    encoded = binascii.b2a_base64(blob, newline=False).decode("ascii")
    return f"{blob_key_type(blob)} {encoded} {comment}"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What ``client list`` shows about a certificate (nothing secret, nothing verified)."""

    key_type: str
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    serial: int
    cert_type: str = "user"
    #: SHA256 fingerprint of the signing CA key.
    ca_fingerprint: str = ""
    #: SHA256 fingerprint of the certified key, as ``ssh-keygen -l`` prints for the cert.
    key_fingerprint: str = ""

    @property
    def forever(self) -> bool:
        """True when the certificate never expires (``valid_before`` is 2**64-1)."""
        return self.valid_before >= 2**64 - 1


def parse_certificate(blob: bytes) -> CertInfo:
    """Summarise a certificate blob; ``KeyFormatError`` if not a supported certificate."""
    cert = load_certificate(blob)
    return CertInfo(
        key_type=blob_key_type(blob),
        key_id=cert.key_id.decode("utf-8", "replace"),
        principals=tuple(p.decode("utf-8", "replace") for p in cert.valid_principals),
        valid_after=cert.valid_after,
        valid_before=cert.valid_before,
        serial=cert.serial,
        cert_type="host" if cert.type is SSHCertificateType.HOST else "user",
        ca_fingerprint=_fingerprint_or_empty(cert.signature_key()),
        key_fingerprint=fingerprint_sha256(certified_key_blob(cert)),
    )


def _fingerprint_or_empty(key: object) -> str:
    try:
        return fingerprint_sha256(encode_public_blob(key))  # type: ignore[arg-type]
    except ValueError:
        return ""
