"""Public-key blobs, fingerprints, certificates and signing for every key the agent serves.

Stores build ``SoftwareKey`` objects (from files or ``ssh-add``) or use the blob and
signature helpers directly (PKCS#11 tokens, upstream agents). Everything here is pure
and synchronous; none of it touches sockets.

The names below are imported on first use (``secretivex.lazy``): the client and the
upstream key checks need fingerprints, not private-key loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from secretivex.lazy import exports

if TYPE_CHECKING:
    from secretivex.keys.blobs import (
        CERT_SUFFIX,
        SUPPORTED_KEY_TYPES,
        CertInfo,
        PrivateKey,
        PublicKey,
        blob_key_type,
        encode_public_blob,
        openssh_public_line,
        parse_certificate,
        plain_key_type,
        public_key_from_blob,
    )
    from secretivex.keys.errors import KeyFormatError, KeyLoadError
    from secretivex.keys.files import (
        is_encrypted_key_file,
        load_private_key_file,
        looks_like_private_key,
    )
    from secretivex.keys.identity import Identity, SigningError, blob_type, fingerprint_sha256
    from secretivex.keys.signatures import (
        SSH_AGENT_RSA_SHA2_256,
        SSH_AGENT_RSA_SHA2_512,
        ecdsa_raw_to_ssh,
        encode_signature,
        rsa_algorithm_for_flags,
        verify_signature,
    )
    from secretivex.keys.software import SoftwareKey, WireFields, key_from_wire, key_to_wire

__all__ = [
    "CERT_SUFFIX",
    "SSH_AGENT_RSA_SHA2_256",
    "SSH_AGENT_RSA_SHA2_512",
    "SUPPORTED_KEY_TYPES",
    "CertInfo",
    "Identity",
    "KeyFormatError",
    "KeyLoadError",
    "PrivateKey",
    "PublicKey",
    "SigningError",
    "SoftwareKey",
    "WireFields",
    "blob_key_type",
    "blob_type",
    "ecdsa_raw_to_ssh",
    "encode_public_blob",
    "encode_signature",
    "fingerprint_sha256",
    "is_encrypted_key_file",
    "key_from_wire",
    "key_to_wire",
    "load_private_key_file",
    "looks_like_private_key",
    "openssh_public_line",
    "parse_certificate",
    "plain_key_type",
    "public_key_from_blob",
    "rsa_algorithm_for_flags",
    "verify_signature",
]

#: Public name -> the module defining it (imported on first use).
_HOMES: dict[str, str] = {
    "CERT_SUFFIX": "secretivex.keys.blobs",
    "CertInfo": "secretivex.keys.blobs",
    "Identity": "secretivex.keys.identity",
    "KeyFormatError": "secretivex.keys.errors",
    "KeyLoadError": "secretivex.keys.errors",
    "PrivateKey": "secretivex.keys.blobs",
    "PublicKey": "secretivex.keys.blobs",
    "SSH_AGENT_RSA_SHA2_256": "secretivex.keys.signatures",
    "SSH_AGENT_RSA_SHA2_512": "secretivex.keys.signatures",
    "SUPPORTED_KEY_TYPES": "secretivex.keys.blobs",
    "SigningError": "secretivex.keys.identity",
    "SoftwareKey": "secretivex.keys.software",
    "WireFields": "secretivex.keys.software",
    "blob_key_type": "secretivex.keys.blobs",
    "blob_type": "secretivex.keys.identity",
    "ecdsa_raw_to_ssh": "secretivex.keys.signatures",
    "encode_public_blob": "secretivex.keys.blobs",
    "encode_signature": "secretivex.keys.signatures",
    "fingerprint_sha256": "secretivex.keys.identity",
    "is_encrypted_key_file": "secretivex.keys.files",
    "key_from_wire": "secretivex.keys.software",
    "key_to_wire": "secretivex.keys.software",
    "load_private_key_file": "secretivex.keys.files",
    "looks_like_private_key": "secretivex.keys.files",
    "openssh_public_line": "secretivex.keys.blobs",
    "parse_certificate": "secretivex.keys.blobs",
    "plain_key_type": "secretivex.keys.blobs",
    "public_key_from_blob": "secretivex.keys.blobs",
    "rsa_algorithm_for_flags": "secretivex.keys.signatures",
    "verify_signature": "secretivex.keys.signatures",
}

__getattr__ = exports(__name__, globals(), _HOMES)
