"""Checks for keys the agent lists but did not build: an upstream agent's, a token's.

OpenSSH's clients (``ssh_fetch_identitylist``) skip a listed key whose type they do not
know, but reject the *whole* identities answer when a key of a type they know fails to
parse, a certificate's CA signature does not verify, or a comment holds a NUL byte.
One such key from one store would then hide every key of every store from ``ssh`` and
``ssh-add``. Stores that list keys from elsewhere pass each (blob, comment) through
:func:`check_listed_blob` and :func:`listed_comment` first.

The blob check is an allowlist: a key is listed only if it parses here as OpenSSH
parses it (``sshkey_from_blob``, ``cert_parse``). Types this package cannot check
(``ssh-dss``, XMSS, future ones) are refused rather than passed through unchecked.
"""

from __future__ import annotations

import unicodedata
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from secretivex.keys._wire import Reader, WireError, string
from secretivex.keys.blobs import (
    CERT_SUFFIX,
    PLAIN_KEY_TYPES,
    blob_key_type,
    is_certificate_type,
    public_key_from_blob,
    safe_type_name,
)
from secretivex.keys.errors import KeyFormatError
from secretivex.keys.signatures import verify_signature

__all__ = [
    "MAX_LISTED_COMMENT_BYTES",
    "SK_KEY_TYPES",
    "check_listed_blob",
    "listed_comment",
]

SK_ED25519: Final = "sk-ssh-ed25519@openssh.com"
SK_ECDSA: Final = "sk-ecdsa-sha2-nistp256@openssh.com"
#: FIDO security keys (PROTOCOL.u2f): signed by the agent that holds them, never here,
#: but listed and proxied like any other key.
SK_KEY_TYPES: Final = frozenset({SK_ED25519, SK_ECDSA})
#: Certificate type -> the plain type it certifies (sk names do not end in the suffix).
_CERTIFIED: Final = {t + CERT_SUFFIX: t for t in PLAIN_KEY_TYPES} | {
    "sk-ssh-ed25519-cert-v01@openssh.com": SK_ED25519,
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": SK_ECDSA,
}

#: OpenSSH's limit on a certificate's principals (SSHKEY_CERT_MAX_PRINCIPALS).
MAX_CERT_PRINCIPALS: Final = 256
_CERT_USER, _CERT_HOST = 1, 2

#: Longest comment listed for a key from elsewhere (UTF-8 bytes). The protocol bounds a
#: comment only by the 256 KiB answer it travels in, which one long comment would fill
#: for every store; 1 KiB is far beyond ``user@host`` or a path, and leaves room for
#: hundreds of keys in one answer.
MAX_LISTED_COMMENT_BYTES: Final = 1024
_ELLIPSIS: Final = "\u2026"
#: Bidirectional overrides and isolates: they reorder what a terminal shows.
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_listed_blob(blob: bytes) -> str:
    """The key type of ``blob`` if OpenSSH's clients would accept it in a listing.

    ``KeyFormatError`` (message safe to log: no key bytes) for a blob that is malformed,
    of a type not checked here, or a certificate that does not parse as OpenSSH parses
    it or whose CA signature does not verify.
    """
    key_type = blob_key_type(blob)
    certified = _CERTIFIED.get(key_type)
    if certified is not None:
        _check_certificate(blob, key_type, certified)
    elif key_type in SK_KEY_TYPES:
        try:
            reader = Reader(blob)
            reader.string()
            _check_plain_fields(key_type, reader)
            reader.expect_end()
        except WireError:
            raise KeyFormatError(f"malformed {key_type} public key blob") from None
    elif key_type in PLAIN_KEY_TYPES:
        public_key_from_blob(blob)
    else:
        raise KeyFormatError(f"unsupported key type {safe_type_name(key_type)}")
    return key_type


def _check_plain_fields(key_type: str, reader: Reader) -> None:
    """Read (and check) the public fields of a plain key of ``key_type``.

    Used for the bare key and for the key inside a certificate, whose fields are the
    same (PROTOCOL.certkeys) but follow a nonce.
    """
    start = reader.position
    if key_type == SK_ED25519:
        raw = reader.string()
        reader.string()  # application ("ssh:" ...), any bytes
        if len(raw) != 32:
            raise KeyFormatError(f"malformed {key_type} public key blob")
        Ed25519PublicKey.from_public_bytes(raw)
        return
    if key_type == SK_ECDSA:
        if reader.string() != b"nistp256":
            raise KeyFormatError(f"malformed {key_type} public key blob")
        point = reader.string()
        reader.string()  # application
        if not point or point[0] != 4:
            raise KeyFormatError(f"malformed {key_type} public key blob")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyFormatError(f"invalid {key_type} public key") from None
        return
    # Plain types: consume the fields, then let the blob parser check them all.
    if key_type == "ssh-ed25519":
        reader.string()
    elif key_type == "ssh-rsa":
        reader.string()
        reader.string()
    else:  # ecdsa-sha2-*: curve name, point
        reader.string()
        reader.string()
    public_key_from_blob(string(key_type.encode()) + reader.slice_from(start))


def _check_certificate(blob: bytes, key_type: str, certified: str) -> None:
    """OpenSSH's ``cert_parse``: fields, principals, options, CA key, CA signature."""
    try:
        reader = Reader(blob)
        reader.string()  # type
        reader.string()  # nonce
        _check_plain_fields(certified, reader)
        reader.u32()  # serial (uint64)
        reader.u32()
        cert_type = reader.u32()
        key_id = reader.string()
        principals = Reader(reader.string())
        reader.u32()  # valid after (uint64)
        reader.u32()
        reader.u32()  # valid before (uint64)
        reader.u32()
        critical = Reader(reader.string())
        extensions = Reader(reader.string())
        reader.string()  # reserved
        ca_blob = reader.string()
        signed = blob[: reader.position]
        signature = reader.string()
        reader.expect_end()
        if cert_type not in (_CERT_USER, _CERT_HOST):
            raise KeyFormatError(f"{key_type} certificate of unknown type {cert_type}")
        if b"\x00" in key_id:
            raise KeyFormatError(f"malformed {key_type} certificate")
        count = 0
        while not principals.at_end():
            count += 1
            if count > MAX_CERT_PRINCIPALS or b"\x00" in principals.string():
                raise KeyFormatError(f"malformed {key_type} certificate")
        for section in (critical, extensions):
            while not section.at_end():
                section.string()
                section.string()
    except WireError:
        raise KeyFormatError(f"malformed {key_type} certificate") from None
    ca_type = blob_key_type(ca_blob)
    if is_certificate_type(ca_type):
        raise KeyFormatError(f"{key_type} certificate signed by a certificate")
    check_listed_blob(ca_blob)
    if ca_type in SK_KEY_TYPES or not verify_signature(ca_blob, signed, signature):
        raise KeyFormatError(f"{key_type} certificate signature does not verify")


def listed_comment(comment: str) -> str:
    """A comment fit to list for a key from elsewhere.

    Control characters (a NUL makes OpenSSH's clients reject the whole listing; the rest
    reach the terminal of whoever runs ``ssh-add -l``), bidirectional overrides and
    bytes that were not UTF-8 become ``?``; the result is cut to
    ``MAX_LISTED_COMMENT_BYTES`` bytes of UTF-8, ending in an ellipsis when cut.
    """
    if comment.isprintable() and len(comment) <= MAX_LISTED_COMMENT_BYTES // 4:
        return comment  # the usual case: short and clean (isprintable: no Cc/Cs/Cf...)
    cleaned = "".join(
        "?" if ch in _BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Cs") else ch
        for ch in comment
    )
    encoded = cleaned.encode("utf-8")
    if len(encoded) <= MAX_LISTED_COMMENT_BYTES:
        return cleaned
    room = MAX_LISTED_COMMENT_BYTES - len(_ELLIPSIS.encode("utf-8"))
    return encoded[:room].decode("utf-8", "ignore") + _ELLIPSIS
