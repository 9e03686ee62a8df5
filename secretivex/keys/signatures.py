"""SSH signature blobs: framing raw signatures and verifying blobs.

A signature blob is ``string algorithm || string signature`` (RFC 4253 section 6.6,
RFC 5656 section 3.1.2, RFC 8332). Token stores get raw signatures from hardware and
frame them here; session-bind and the tests verify blobs here.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from secretivex.keys._wire import Reader, WireError, mpint, string
from secretivex.keys.blobs import CURVES_BY_NAME, ED25519, public_key_from_blob
from secretivex.keys.identity import SigningError

#: SSH_AGENT_RSA_SHA2_256 / _512 sign-request flags (PROTOCOL.agent / RFC 8332).
SSH_AGENT_RSA_SHA2_256 = 2
SSH_AGENT_RSA_SHA2_512 = 4

#: RSA signature algorithm names and their hashes (RFC 8332).
RSA_SIGNATURE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ssh-rsa": hashes.SHA1,
    "rsa-sha2-256": hashes.SHA256,
    "rsa-sha2-512": hashes.SHA512,
}


def rsa_algorithm_for_flags(flags: int) -> str:
    """The RSA signature algorithm OpenSSH's agent uses for these sign-request flags.

    OpenSSH tests SHA2_256 before SHA2_512, so a request with both bits gets SHA-256.
    """
    if flags & SSH_AGENT_RSA_SHA2_256:
        return "rsa-sha2-256"
    if flags & SSH_AGENT_RSA_SHA2_512:
        return "rsa-sha2-512"
    return "ssh-rsa"


def encode_signature(algorithm: str, raw: bytes) -> bytes:
    """Frame a signature: ``string algorithm || string raw``.

    ``raw`` is the algorithm's signature body: 64 bytes for Ed25519, the PKCS#1 v1.5
    signature (left-padded to the modulus length) for RSA, and for ECDSA the
    ``mpint r || mpint s`` that ``ecdsa_raw_to_ssh`` builds.
    """
    return string(algorithm.encode("ascii")) + string(raw)


def ecdsa_raw_to_ssh(r_s_concatenated: bytes) -> bytes:
    """Turn a token's fixed-width ``r || s`` (PKCS#11 CKM_ECDSA output) into ``mpint r || mpint s``.

    Pass the result to ``encode_signature``. ``SigningError`` if the input cannot be r||s.
    """
    size = len(r_s_concatenated)
    if size == 0 or size % 2:
        raise SigningError(f"ECDSA signature from token has odd length {size}")
    half = size // 2
    r = int.from_bytes(r_s_concatenated[:half], "big")
    s = int.from_bytes(r_s_concatenated[half:], "big")
    return mpint(r) + mpint(s)


def verify_signature(public_blob: bytes, data: bytes, signature_blob: bytes) -> bool:
    """True if ``signature_blob`` is a valid signature of ``data`` by the key in ``public_blob``.

    Accepts certificate blobs (checks against the certified key) and every algorithm
    OpenSSH accepts for the key type (``ssh-rsa``/``rsa-sha2-256``/``rsa-sha2-512``
    for RSA). Never raises: malformed or unsupported input is simply ``False``.
    """
    try:
        key = public_key_from_blob(bytes(public_blob))
        reader = Reader(bytes(signature_blob))
        algorithm = reader.string().decode("ascii")
        signature = reader.string()
        reader.expect_end()
        if isinstance(key, Ed25519PublicKey):
            if algorithm != ED25519 or len(signature) != 64:
                return False
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            curve = CURVES_BY_NAME[key.curve.name]
            if algorithm != curve.key_type:
                return False
            inner = Reader(signature)
            r = inner.mpint()
            s = inner.mpint()
            inner.expect_end()
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(curve.hash()))
        elif isinstance(key, rsa.RSAPublicKey):
            hash_type = RSA_SIGNATURE_HASHES.get(algorithm)
            modulus_len = (key.key_size + 7) // 8
            if hash_type is None or len(signature) > modulus_len:
                return False
            # OpenSSH accepts (and some signers emit) signatures shorter than the modulus.
            signature = signature.rjust(modulus_len, b"\x00")
            key.verify(signature, data, padding.PKCS1v15(), hash_type())
        else:  # pragma: no cover - public_key_from_blob returns only the above
            return False
    except (InvalidSignature, WireError, ValueError, TypeError, KeyError, UnsupportedAlgorithm):
        return False
    return True
