"""PKCS#11 key attributes -> SSH public keys, and how each key type signs (pure code).

Nothing here talks to a token: the store reads attributes on its module thread and
hands them over; the sign helpers prepare the bytes a token signs and frame what it
returns, exactly as OpenSSH's ssh-pkcs11 does:

* Ed25519: ``CKM_EDDSA`` over the data itself.
* ECDSA: the data hashed in software (SHA-256/384/512 for P-256/384/521, RFC 5656),
  then ``CKM_ECDSA``; the token's fixed-width ``r || s`` becomes two SSH mpints.
* RSA: ``CKM_RSA_PKCS`` over ``DigestInfo || hash`` (SHA-1 for ``ssh-rsa``, SHA-256
  or SHA-512 for the RFC 8332 flags), the same bytes ``RSA_sign`` would pad.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secretivex.keys import (
    PublicKey,
    ecdsa_raw_to_ssh,
    encode_public_blob,
    encode_signature,
    rsa_algorithm_for_flags,
)
from secretivex.keys.listed import check_listed_blob
from secretivex.stores.base import SignError

# PKCS#11 key types (CKK_*) and mechanisms (CKM_*); plain ints so this module does
# not need python-pkcs11's enums.
CKK_RSA = 0x00
CKK_EC = 0x03
CKK_EC_EDWARDS = 0x40
CKM_RSA_PKCS = 0x0001
CKM_ECDSA = 0x1041
CKM_EDDSA = 0x1057


class UnsupportedKey(ValueError):
    """A token object that cannot be an SSH identity; the message says why."""


# --------------------------------------------------------------------------- curves

#: DER (or the PrintableString some tokens use) of CKA_EC_PARAMS -> cryptography curve.
_NIST_PARAMS: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),  # 1.2.840.10045.3.1.7
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),  # 1.3.132.0.34
    bytes.fromhex("06052b81040023"): ec.SECP521R1(),  # 1.3.132.0.35
}
for _name, _curve in (
    ("prime256v1", ec.SECP256R1()),
    ("secp256r1", ec.SECP256R1()),
    ("secp384r1", ec.SECP384R1()),
    ("secp521r1", ec.SECP521R1()),
):
    _NIST_PARAMS[bytes([0x13, len(_name)]) + _name.encode()] = _curve

#: Ways tokens name Ed25519 in CKA_EC_PARAMS: SoftHSM 2.6 and OpenSC write the
#: PrintableString "edwards25519"; PKCS#11 3.0 prefers the RFC 8410 OID 1.3.101.112;
#: old GnuPG-derived tokens use 1.3.6.1.4.1.11591.15.1.
_ED25519_PARAMS = frozenset(
    {
        bytes([0x13, 12]) + b"edwards25519",
        bytes.fromhex("06032b6570"),
        bytes.fromhex("06092b06010401da470f01"),
    }
)
_ED448_PARAMS = frozenset({bytes([0x13, 10]) + b"edwards448", bytes.fromhex("06032b6571")})

#: Curve name -> (hash used by SSH, coordinate size in bytes, SSH key type).
_ECDSA: dict[str, tuple[Callable[[bytes], Any], int, str]] = {
    "secp256r1": (hashlib.sha256, 32, "ecdsa-sha2-nistp256"),
    "secp384r1": (hashlib.sha384, 48, "ecdsa-sha2-nistp384"),
    "secp521r1": (hashlib.sha512, 66, "ecdsa-sha2-nistp521"),
}

# --------------------------------------------------------------------------- RSA

#: DER DigestInfo prefixes (RFC 8017 section 9.2, note 1).
DIGEST_INFO: dict[str, tuple[bytes, Callable[[bytes], Any]]] = {
    "ssh-rsa": (bytes.fromhex("3021300906052b0e03021a05000414"), hashlib.sha1),
    "rsa-sha2-256": (bytes.fromhex("3031300d060960864801650304020105000420"), hashlib.sha256),
    "rsa-sha2-512": (bytes.fromhex("3051300d060960864801650304020305000440"), hashlib.sha512),
}


def unwrap_octet_string(value: bytes, sizes: tuple[int, ...]) -> bytes:
    """CKA_EC_POINT content: PKCS#11 says DER OCTET STRING, some tokens give it raw.

    ``sizes`` are the lengths a raw point may have; the DER form is taken only when it
    parses exactly and its content has one of those lengths (an uncompressed P-256
    point also starts with 0x04, so the first byte alone decides nothing).
    """
    if len(value) >= 2 and value[0] == 0x04:
        length = value[1]
        offset = 2
        if length == 0x81 and len(value) >= 3:
            length, offset = value[2], 3
        elif length == 0x82 and len(value) >= 4:
            length, offset = int.from_bytes(value[2:4], "big"), 4
        elif length & 0x80:
            length = -1
        if length == len(value) - offset and length in sizes:
            return value[offset:]
    if len(value) in sizes:
        return value
    raise UnsupportedKey(f"EC_POINT of unexpected length {len(value)}")


def _curve_sizes(curve: ec.EllipticCurve) -> tuple[int, ...]:
    size = (curve.key_size + 7) // 8
    return (1 + 2 * size, 1 + size)  # uncompressed or compressed point


def public_key_from_attributes(key_type: int, attrs: Mapping[Any, Any]) -> PublicKey:
    """The public key described by a public key object's attributes.

    ``attrs`` maps CKA_* numbers (python-pkcs11 ``Attribute`` members are ints) to
    values: EC_PARAMS/EC_POINT for EC and Edwards keys, MODULUS/PUBLIC_EXPONENT for
    RSA. ``UnsupportedKey`` with a reason for anything SSH cannot use.
    """
    if key_type == CKK_RSA:
        modulus = attrs.get(0x120)  # CKA_MODULUS
        exponent = attrs.get(0x122)  # CKA_PUBLIC_EXPONENT
        if not modulus or not exponent:
            raise UnsupportedKey("RSA public key without modulus or exponent")
        n = int.from_bytes(modulus, "big")
        e = int.from_bytes(exponent, "big")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise UnsupportedKey(f"invalid RSA public key: {exc}") from None
    if key_type not in (CKK_EC, CKK_EC_EDWARDS):
        raise UnsupportedKey(f"key type 0x{key_type:x} is not usable for SSH")
    params = attrs.get(0x180)  # CKA_EC_PARAMS
    point = attrs.get(0x181)  # CKA_EC_POINT
    if not params or not point:
        raise UnsupportedKey("EC key without EC_PARAMS or EC_POINT")
    params = bytes(params)
    point = bytes(point)
    if params in _ED25519_PARAMS:
        raw = unwrap_octet_string(point, (32,))
        try:
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise UnsupportedKey(f"invalid Ed25519 point: {exc}") from None
    if params in _ED448_PARAMS:
        raise UnsupportedKey("Ed448 keys are not supported by SSH agents")
    curve = _NIST_PARAMS.get(params)
    if curve is None or key_type != CKK_EC:
        raise UnsupportedKey(f"unsupported curve (EC_PARAMS {params.hex()})")
    raw = unwrap_octet_string(point, _curve_sizes(curve))
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)
    except ValueError as exc:
        raise UnsupportedKey(f"invalid {curve.name} point: {exc}") from None


def public_key_from_certificate(der: bytes) -> PublicKey:
    """The public key of a DER X.509 certificate object (CKA_VALUE)."""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise UnsupportedKey(f"unreadable certificate: {exc}") from None
    if isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return key
    raise UnsupportedKey(f"certificate key kind {type(key).__name__} is not usable for SSH")


# --------------------------------------------------------------------------- signing


@dataclass(frozen=True, slots=True)
class SignPlan:
    """How one key signs: what to feed the token and how to frame the result.

    ``prepare(data, flags)`` returns ``(algorithm, bytes for C_Sign)``;
    ``finish(algorithm, raw)`` returns the SSH signature blob.
    """

    key_type: str
    blob: bytes
    mechanism: int
    kind: str  # "ed25519" | "ecdsa" | "rsa"
    size: int  # ECDSA coordinate bytes, RSA modulus bytes, 64 for Ed25519
    hasher: Callable[[bytes], Any] | None = None

    def prepare(self, data: bytes, flags: int) -> tuple[str, bytes]:
        if self.kind == "ed25519":
            return self.key_type, data
        if self.kind == "ecdsa":
            assert self.hasher is not None
            return self.key_type, self.hasher(data).digest()
        algorithm = rsa_algorithm_for_flags(flags)
        prefix, hasher = DIGEST_INFO[algorithm]
        return algorithm, prefix + hasher(data).digest()

    def finish(self, algorithm: str, raw: bytes) -> bytes:
        if self.kind == "ed25519":
            if len(raw) != 64:
                raise SignError(f"token returned a {len(raw)}-byte Ed25519 signature")
            return encode_signature(algorithm, raw)
        if self.kind == "ecdsa":
            if len(raw) != 2 * self.size:
                raise SignError(f"token returned a {len(raw)}-byte {self.key_type} signature")
            return encode_signature(algorithm, ecdsa_raw_to_ssh(raw))
        if len(raw) > self.size:
            raise SignError(f"token returned a {len(raw)}-byte RSA signature")
        # OpenSSH pads short results to the modulus length (ssh_rsa_sign).
        return encode_signature(algorithm, raw.rjust(self.size, b"\x00"))


def sign_plan(public_key: PublicKey) -> SignPlan:
    """The ``SignPlan`` (and SSH blob) for a public key; ``UnsupportedKey`` otherwise."""
    try:
        blob = encode_public_blob(public_key)
        # A token may hold keys OpenSSH refuses (RSA under 1024 bits): listed, one would
        # make its clients reject the whole listing, every store's keys with it.
        check_listed_blob(blob)
    except ValueError as exc:
        raise UnsupportedKey(str(exc)) from None
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return SignPlan("ssh-ed25519", blob, CKM_EDDSA, "ed25519", 64)
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        hasher, size, key_type = _ECDSA[public_key.curve.name]
        return SignPlan(key_type, blob, CKM_ECDSA, "ecdsa", size, hasher)
    if isinstance(public_key, rsa.RSAPublicKey):
        return SignPlan("ssh-rsa", blob, CKM_RSA_PKCS, "rsa", (public_key.key_size + 7) // 8)
    raise UnsupportedKey(f"unsupported key kind {type(public_key).__name__}")


def key_kind_matches(private_key_type: int, plan: SignPlan) -> bool:
    """Does a private key's CKA_KEY_TYPE fit the public key it was paired with?"""
    if plan.kind == "rsa":
        return private_key_type == CKK_RSA
    if plan.kind == "ecdsa":
        return private_key_type == CKK_EC
    return private_key_type in (CKK_EC, CKK_EC_EDWARDS)
