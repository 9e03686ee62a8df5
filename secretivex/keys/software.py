"""In-memory private keys that sign exactly as OpenSSH's agent does.

``SoftwareKey`` backs the file store and the memory (ssh-add) store. Signing is the
agent's per-request hot path, so everything that does not depend on the data (blobs,
fingerprints, algorithm prefixes, hash and padding objects) is built once here and
``sign`` is one ``cryptography`` call plus a concatenation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificate,
)

from secretivex.keys._wire import U32, WireError, mpint, mpint_value, string
from secretivex.keys.blobs import (
    CERT_SUFFIX,
    CURVES_BY_KEY_TYPE,
    CURVES_BY_NAME,
    ED25519,
    RSA,
    SUPPORTED_KEY_TYPES,
    PrivateKey,
    blob_key_type,
    certified_key_blob,
    check_rsa_bits,
    encode_public_blob,
    is_certificate_type,
    plain_key_type,
    safe_type_name,
    verified_certificate,
)
from secretivex.keys.errors import KeyFormatError, KeyLoadError
from secretivex.keys.identity import SigningError, fingerprint_sha256
from secretivex.keys.signatures import (
    RSA_SIGNATURE_HASHES,
    SSH_AGENT_RSA_SHA2_256,
    SSH_AGENT_RSA_SHA2_512,
)

_Signer = Callable[[bytes, int], bytes]

#: RSA-4096 signs in ~3 ms here; bigger moduli take up to seconds (16384 bits).
INLINE_SIGN_MAX_RSA_BITS = 4096
WireFields = tuple[bytes | int, ...]


class SoftwareKey:
    """A private key held in memory, with its public blob and (optionally) a certificate.

    ``public_blob`` is what the agent lists: the certificate when one is attached,
    else the plain key. ``fingerprint`` hashes ``public_blob`` (the agent's identity
    of the entry); ``plain_fingerprint`` hashes the plain key, which is what
    ``ssh-keygen -l`` and ``ssh-add -l`` print even for certificates.
    Construction raises ``KeyFormatError`` (a ``ValueError`` with a safe message) for
    unsupported keys or a certificate that does not verify or does not certify this key.
    """

    __slots__ = (
        "_private_key",
        "_signer",
        "bits",
        "cert_warning",
        "certificate",
        "comment",
        "fingerprint",
        "key_type",
        "plain_fingerprint",
        "plain_key_type",
        "plain_public_blob",
        "public_blob",
        "sign_inline",
    )

    def __init__(
        self, private_key: PrivateKey, comment: str = "", certificate: bytes | None = None
    ) -> None:
        self._private_key = private_key
        self.comment = comment
        #: Why a certificate found next to a key file was ignored, for the caller to log.
        self.cert_warning: str | None = None
        self.plain_public_blob = encode_public_blob(private_key.public_key())
        self.plain_key_type = blob_key_type(self.plain_public_blob)
        self.plain_fingerprint = fingerprint_sha256(self.plain_public_blob)
        self._signer, self.bits = _make_signer(private_key)
        #: Cheap enough (a few ms at most) to sign on the event loop; else callers
        #: sign in a worker thread (cryptography releases the GIL while signing).
        self.sign_inline = not (
            isinstance(private_key, rsa.RSAPrivateKey) and self.bits > INLINE_SIGN_MAX_RSA_BITS
        )
        self.certificate: bytes | None = None
        self.public_blob = self.plain_public_blob
        self.key_type = self.plain_key_type
        self.fingerprint = self.plain_fingerprint
        if certificate is not None:
            certificate = bytes(certificate)
            cert = verified_certificate(certificate)
            if certified_key_blob(cert) != self.plain_public_blob:
                raise KeyFormatError("certificate is for a different key")
            self.certificate = certificate
            self.public_blob = certificate
            self.key_type = self.plain_key_type + CERT_SUFFIX
            self.fingerprint = fingerprint_sha256(certificate)

    @property
    def private_key(self) -> PrivateKey:
        """The ``cryptography`` private key (for ``key_to_wire``; never log it)."""
        return self._private_key

    def sign(self, data: bytes, flags: int = 0) -> bytes:
        """Sign ``data``; return the signature blob (``string alg || string sig``).

        RSA honours SSH_AGENT_RSA_SHA2_256/512 in ``flags`` (plain ``ssh-rsa``/SHA-1
        without them); other key types ignore flags, as OpenSSH does.
        """
        try:
            return self._signer(data, flags)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"{self.key_type} signing failed: {type(exc).__name__}") from None

    def __repr__(self) -> str:
        return f"SoftwareKey({self.key_type} {self.fingerprint} {self.comment!r})"


def _ed25519_signer(private_key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """libsodium's Ed25519 (PyNaCl) when installed, else OpenSSL's (cryptography).

    Ed25519 signatures are deterministic: both give the same bytes. libsodium signs
    about 1.7x faster here (docs/performance.md), and Ed25519 is what most agents
    hold. PyNaCl's import (~20 ms) waits for the first signature, not start-up.
    """
    if not _sodium_available():
        return private_key.sign
    from cryptography.hazmat.primitives import serialization

    # libsodium's secret key is seed || public key.
    secret = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    ) + private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )

    def sign(data: bytes) -> bytes:
        return _sodium_sign()(data, secret)[:64]

    return sign


def _sodium_available() -> bool:
    """Whether PyNaCl is installed (looked up once, without importing it)."""
    global _SODIUM
    if _SODIUM is None:
        import importlib.util

        _SODIUM = importlib.util.find_spec("nacl") is not None
    return _SODIUM


_SODIUM: bool | None = None


@functools.cache
def _sodium_sign() -> Callable[[bytes, bytes], bytes]:
    from nacl.bindings import crypto_sign

    return crypto_sign


def _make_signer(private_key: PrivateKey) -> tuple[_Signer, int]:
    """Build the per-type signing closure with every constant precomputed."""
    if isinstance(private_key, Ed25519PrivateKey):
        ed_prefix = string(ED25519.encode()) + U32.pack(64)
        ed_sign = _ed25519_signer(private_key)

        def sign_ed25519(data: bytes, flags: int) -> bytes:
            return ed_prefix + ed_sign(data)

        return sign_ed25519, 256

    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve = CURVES_BY_NAME.get(private_key.curve.name)
        if curve is None:
            raise KeyFormatError(f"unsupported elliptic curve {private_key.curve.name}")
        ec_sign = private_key.sign
        algorithm = ec.ECDSA(curve.hash())
        ec_prefix = string(curve.key_type.encode())
        pack = U32.pack

        def sign_ecdsa(data: bytes, flags: int) -> bytes:
            r, s = decode_dss_signature(ec_sign(data, algorithm))
            inner = mpint(r) + mpint(s)
            return ec_prefix + pack(len(inner)) + inner

        return sign_ecdsa, private_key.curve.key_size

    if isinstance(private_key, rsa.RSAPrivateKey):
        check_rsa_bits(private_key.key_size)
        rsa_sign = private_key.sign
        modulus_len = (private_key.key_size + 7) // 8
        pkcs1 = padding.PKCS1v15()
        length = U32.pack(modulus_len)
        sha1, sha256, sha512 = (
            (string(name.encode()) + length, RSA_SIGNATURE_HASHES[name]())
            for name in ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512")
        )

        def sign_rsa(data: bytes, flags: int) -> bytes:
            # Same precedence as OpenSSH's agent_decode_alg(): SHA2_256 first.
            if flags & SSH_AGENT_RSA_SHA2_256:
                prefix, hash_alg = sha256
            elif flags & SSH_AGENT_RSA_SHA2_512:
                prefix, hash_alg = sha512
            else:
                prefix, hash_alg = sha1
            signature = rsa_sign(data, pkcs1, hash_alg)
            if len(signature) != modulus_len:
                signature = signature.rjust(modulus_len, b"\x00")
            return prefix + signature

        return sign_rsa, private_key.key_size

    raise KeyFormatError(f"unsupported private key kind {type(private_key).__name__}")


# -- the agent protocol's private key encoding (SSH_AGENTC_ADD_IDENTITY) ------------

_FIELD_COUNTS: dict[str, int] = {
    ED25519: 2,  # pub32, priv64
    RSA: 6,  # n, e, d, iqmp, p, q
    ED25519 + CERT_SUFFIX: 3,  # cert, pub32, priv64
    RSA + CERT_SUFFIX: 5,  # cert, d, iqmp, p, q
}
for _ktype in CURVES_BY_KEY_TYPE:
    _FIELD_COUNTS[_ktype] = 3  # curve name, Q, d
    _FIELD_COUNTS[_ktype + CERT_SUFFIX] = 2  # cert, d


class _Malformed(KeyFormatError):
    """Field content is wrong; the message becomes part of a KeyLoadError."""


def _as_bytes(value: bytes | int) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise _Malformed("expected a string field, got an integer")


def _as_int(value: bytes | int) -> int:
    if isinstance(value, bool):
        raise _Malformed("expected an mpint field")
    if isinstance(value, int):
        if value < 0:
            raise _Malformed("negative mpint field")
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return mpint_value(bytes(value))
        except WireError as exc:
            raise _Malformed(str(exc)) from None
    raise _Malformed("expected an mpint field")


def _wire_label(key_type: str, comment: str) -> str:
    label = f"added {safe_type_name(key_type)} key"
    if comment:
        label += f" {comment[:200]!r}"
    return label


def key_from_wire(key_type: str, fields: WireFields, comment: str) -> SoftwareKey:
    """Build a key from SSH_AGENTC_ADD_IDENTITY fields (layouts per PROTOCOL.agent).

    mpint fields may come as ``int`` or as the raw mpint bytes. Every public part is
    checked against the private part (and the certificate against both), so a
    malformed or inconsistent request is a ``KeyLoadError``, never a wrong key.
    """
    label = _wire_label(key_type, comment)
    if key_type not in SUPPORTED_KEY_TYPES:
        raise KeyLoadError(f"{label}: unsupported key type {safe_type_name(key_type)}")
    expected = _FIELD_COUNTS[key_type]
    if len(fields) != expected:
        raise KeyLoadError(f"{label}: malformed key ({len(fields)} fields, expected {expected})")
    try:
        certificate: bytes | None = None
        cert: SSHCertificate | None = None
        body = fields
        if is_certificate_type(key_type):
            certificate = _as_bytes(fields[0])
            if blob_key_type(certificate) != key_type:
                raise _Malformed("certificate type does not match key type")
            cert = verified_certificate(certificate)
            body = fields[1:]
        private_key = _private_from_fields(plain_key_type(key_type), body, cert)
        key = SoftwareKey(private_key, comment, certificate)
        if isinstance(private_key, rsa.RSAPrivateKey):
            # p and q were not tested for primality: if they are not primes, OpenSSL's
            # CRT self-check fails and it falls back to a full-size exponentiation.
            key.sign_inline = False
        return key
    except KeyFormatError as exc:
        raise KeyLoadError(f"{label}: {exc}") from None
    except (ValueError, TypeError, ArithmeticError):
        # cryptography's messages are not ours to vouch for: say it generically.
        raise KeyLoadError(f"{label}: inconsistent or invalid key") from None


def _private_from_fields(
    key_type: str, fields: WireFields, cert: SSHCertificate | None
) -> PrivateKey:
    cert_key = cert.public_key() if cert is not None else None
    if key_type == ED25519:
        pub, priv = _as_bytes(fields[0]), _as_bytes(fields[1])
        if len(pub) != 32 or len(priv) != 64:
            raise _Malformed("malformed key (bad Ed25519 field length)")
        if priv[32:] != pub:
            raise _Malformed("private key does not match its public key")
        ed_key = Ed25519PrivateKey.from_private_bytes(priv[:32])
        if ed_key.public_key().public_bytes_raw() != pub:
            raise _Malformed("private key does not match its public key")
        if cert_key is not None and (
            not isinstance(cert_key, Ed25519PublicKey) or cert_key.public_bytes_raw() != pub
        ):
            raise _Malformed("certificate is for a different key")
        return ed_key

    curve = CURVES_BY_KEY_TYPE.get(key_type)
    if curve is not None:
        if cert_key is None:
            if _as_bytes(fields[0]) != curve.ssh_name.encode():
                raise _Malformed("malformed key (curve name does not match key type)")
            point = _as_bytes(fields[1])
            d = _as_int(fields[2])
        else:
            if not isinstance(cert_key, ec.EllipticCurvePublicKey):
                raise _Malformed("certificate is for a different key")
            point = cert_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            d = _as_int(fields[0])
        ec_key = ec.derive_private_key(d, curve.curve())
        derived = ec_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        if derived != point:
            raise _Malformed("private key does not match its public key")
        return ec_key

    # ssh-rsa
    if cert_key is None:
        n, e = _as_int(fields[0]), _as_int(fields[1])
        d, iqmp, p, q = (_as_int(v) for v in fields[2:])
    else:
        if not isinstance(cert_key, rsa.RSAPublicKey):
            raise _Malformed("certificate is for a different key")
        public_numbers = cert_key.public_numbers()
        n, e = public_numbers.n, public_numbers.e
        d, iqmp, p, q = (_as_int(v) for v in fields)
    check_rsa_bits(n.bit_length())
    check_rsa_consistency(n, e, d, iqmp, p, q)
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=iqmp,
        public_numbers=rsa.RSAPublicNumbers(e, n),
    )
    # cryptography's own validation tests p and q for primality while holding the GIL
    # (~45 s for 16384 bits, freezing every client): the checks above are what OpenSSH's
    # agent relies on, and a peer that sends non-primes only hurts its own signatures.
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


def check_rsa_consistency(n: int, e: int, d: int, iqmp: int, p: int, q: int) -> None:
    """Cheap RSA private-key checks (a few big-integer products, no primality tests).

    They reject keys whose parts do not belong together (n = p*q, d inverts e modulo
    p-1 and q-1, iqmp inverts q modulo p) in well under a millisecond at 16384 bits,
    so an added key is validated without stalling the agent.
    """
    if not (3 <= e < n and e & 1):
        raise _Malformed("invalid RSA public exponent")
    if not (1 < d < n and 2 < p < n and 2 < q < n and 0 < iqmp < p):
        raise _Malformed("private key does not match its public key")
    if p * q != n:
        raise _Malformed("private key does not match its public key")
    if (e * d) % (p - 1) != 1 or (e * d) % (q - 1) != 1 or (iqmp * q) % p != 1:
        raise _Malformed("inconsistent RSA private key")


def key_to_wire(key: SoftwareKey) -> tuple[str, WireFields]:
    """SSH_AGENTC_ADD_IDENTITY key type and fields for ``key``; inverse of ``key_from_wire``."""
    private_key = key.private_key
    cert = key.certificate
    if isinstance(private_key, Ed25519PrivateKey):
        pub = private_key.public_key().public_bytes_raw()
        priv = private_key.private_bytes_raw() + pub
        if cert is None:
            return ED25519, (pub, priv)
        return key.key_type, (cert, pub, priv)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        d = private_key.private_numbers().private_value
        if cert is None:
            curve = CURVES_BY_NAME[private_key.curve.name]
            point = private_key.public_key().public_bytes(
                Encoding.X962, PublicFormat.UncompressedPoint
            )
            return curve.key_type, (curve.ssh_name.encode(), point, d)
        return key.key_type, (cert, d)
    numbers = private_key.private_numbers()
    if cert is None:
        public = numbers.public_numbers
        return RSA, (public.n, public.e, numbers.d, numbers.iqmp, numbers.p, numbers.q)
    return key.key_type, (cert, numbers.d, numbers.iqmp, numbers.p, numbers.q)
