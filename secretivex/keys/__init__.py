"""Public-key blobs, fingerprints, certificates and signing for every key the agent serves.

Stores build ``SoftwareKey`` objects (from files or ``ssh-add``) or use the blob and
signature helpers directly (PKCS#11 tokens, upstream agents). Everything here is pure
and synchronous; none of it touches sockets.
"""

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
