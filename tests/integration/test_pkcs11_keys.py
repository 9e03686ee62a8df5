"""The pure parts of the PKCS#11 store: attribute decoding and OpenSSH-compatible signing
inputs. No token needed; the SoftHSM tests exercise the same code end to end."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from secretivex.stores.base import SignError
from secretivex.stores.pkcs11.mechanisms import (
    CKK_EC,
    CKK_EC_EDWARDS,
    CKK_RSA,
    DIGEST_INFO,
    UnsupportedKey,
    key_kind_matches,
    public_key_from_attributes,
    sign_plan,
    unwrap_octet_string,
)

EC_PARAMS, EC_POINT, MODULUS, EXPONENT = 0x180, 0x181, 0x120, 0x122
P256 = bytes.fromhex("06082a8648ce3d030107")


def _der_octets(value: bytes) -> bytes:
    if len(value) < 0x80:
        return bytes([0x04, len(value)]) + value
    return bytes([0x04, 0x81, len(value)]) + value


def _raw(public: ed25519.Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize(
    "params",
    [
        bytes([0x13, 12]) + b"edwards25519",  # SoftHSM 2.6 / OpenSC keypairgen
        bytes.fromhex("06032b6570"),  # RFC 8410 OID (softhsm2-util --import)
        bytes.fromhex("06092b06010401da470f01"),  # GnuPG's Ed25519 OID
    ],
)
@pytest.mark.parametrize("wrapped", [True, False])
def test_ed25519_encodings(params: bytes, wrapped: bool) -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    point = _der_octets(_raw(public)) if wrapped else _raw(public)
    for key_type in (CKK_EC_EDWARDS, CKK_EC):
        decoded = public_key_from_attributes(key_type, {EC_PARAMS: params, EC_POINT: point})
        assert isinstance(decoded, ed25519.Ed25519PublicKey)
        assert _raw(decoded) == _raw(public)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()])
@pytest.mark.parametrize("wrapped", [True, False])
def test_nist_points(curve: ec.EllipticCurve, wrapped: bool) -> None:
    public = ec.generate_private_key(curve).public_key()
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    params = {
        "secp256r1": P256,
        "secp384r1": bytes.fromhex("06052b81040022"),
        "secp521r1": bytes.fromhex("06052b81040023"),
    }[curve.name]
    attrs = {EC_PARAMS: params, EC_POINT: _der_octets(point) if wrapped else point}
    decoded = public_key_from_attributes(CKK_EC, attrs)
    assert decoded == public
    plan = sign_plan(decoded)
    assert plan.key_type == f"ecdsa-sha2-nistp{curve.key_size}"
    assert key_kind_matches(CKK_EC, plan) and not key_kind_matches(CKK_RSA, plan)


def test_raw_p256_point_starting_with_04_is_not_mistaken_for_der() -> None:
    # A raw uncompressed point is 0x04 || X || Y: its second byte is X's first, which
    # may happen to equal a plausible DER length. Only an exact DER parse unwraps.
    for _ in range(200):
        public = ec.generate_private_key(ec.SECP256R1()).public_key()
        point = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert unwrap_octet_string(point, (65, 33)) == point
        assert unwrap_octet_string(_der_octets(point), (65, 33)) == point


def test_rejects_what_ssh_cannot_use() -> None:
    with pytest.raises(UnsupportedKey, match="Ed448"):
        public_key_from_attributes(
            CKK_EC_EDWARDS, {EC_PARAMS: bytes.fromhex("06032b6571"), EC_POINT: bytes(57)}
        )
    with pytest.raises(UnsupportedKey, match="curve"):
        public_key_from_attributes(
            CKK_EC, {EC_PARAMS: bytes.fromhex("06052b8104000a"), EC_POINT: bytes(65)}
        )  # secp256k1
    with pytest.raises(UnsupportedKey):
        public_key_from_attributes(CKK_EC, {EC_PARAMS: P256, EC_POINT: b"\x04" + bytes(64)})
    with pytest.raises(UnsupportedKey):
        public_key_from_attributes(0x1F, {})  # AES is no SSH key
    with pytest.raises(UnsupportedKey):
        public_key_from_attributes(CKK_RSA, {MODULUS: b""})


def _pkcs1_raw_sign(private: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """What CKM_RSA_PKCS does on a token: EMSA-PKCS1-v1_5 type 1 padding + RSA."""
    numbers = private.private_numbers()
    k = (private.key_size + 7) // 8
    encoded = b"\x00\x01" + b"\xff" * (k - len(message) - 3) + b"\x00" + message
    value = pow(int.from_bytes(encoded, "big"), numbers.d, numbers.public_numbers.n)
    return value.to_bytes(k, "big")


@pytest.mark.parametrize(
    "flags,algorithm,hash_type",
    [
        (0, "ssh-rsa", hashes.SHA1),
        (2, "rsa-sha2-256", hashes.SHA256),
        (4, "rsa-sha2-512", hashes.SHA512),
        (6, "rsa-sha2-256", hashes.SHA256),
    ],
)
def test_rsa_digest_info_matches_pkcs1_signing(
    flags: int, algorithm: str, hash_type: type[hashes.HashAlgorithm]
) -> None:
    private = rsa.generate_private_key(65537, 2048)
    numbers = private.public_key().public_numbers()
    public = public_key_from_attributes(
        CKK_RSA, {MODULUS: numbers.n.to_bytes(256, "big"), EXPONENT: numbers.e.to_bytes(3, "big")}
    )
    plan = sign_plan(public)
    data = b"session id and userauth request"
    chosen, payload = plan.prepare(data, flags)
    assert chosen == algorithm
    raw = _pkcs1_raw_sign(private, payload)
    assert raw == private.sign(data, padding.PKCS1v15(), hash_type())
    blob = plan.finish(chosen, raw[1:] if raw[0] == 0 else raw)  # short results are padded
    assert blob.endswith(raw)
    assert DIGEST_INFO[algorithm][0] == payload[: -hash_type().digest_size]


def test_ecdsa_and_ed25519_plans() -> None:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    plan = sign_plan(public)
    algorithm, payload = plan.prepare(b"abc", 4)  # flags mean nothing for ECDSA
    assert algorithm == "ecdsa-sha2-nistp384" and payload == hashlib.sha384(b"abc").digest()
    with pytest.raises(SignError):
        plan.finish(algorithm, bytes(95))
    assert plan.finish(algorithm, b"\x00" * 47 + b"\x01" + b"\x80" + bytes(47)).endswith(
        b"\x00\x00\x00\x01\x01\x00\x00\x00\x31\x00\x80" + bytes(47)
    )
    ed = sign_plan(ed25519.Ed25519PrivateKey.generate().public_key())
    assert ed.prepare(b"abc", 0) == ("ssh-ed25519", b"abc")
    with pytest.raises(SignError):
        ed.finish("ssh-ed25519", bytes(63))
