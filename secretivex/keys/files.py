"""Loading private keys from files, as ``ssh-add FILE`` would.

Formats: OpenSSH ``openssh-key-v1`` (plain or bcrypt-encrypted) and PEM (PKCS#8 and
traditional RSA/EC). ``cryptography`` does the decoding and decryption; this module
only reads what it does not expose (the embedded comment, whether a file is
encrypted) and turns every failure into a ``KeyLoadError`` that names the file.
"""

from __future__ import annotations

import binascii
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
)

from secretivex.keys._wire import Reader, WireError
from secretivex.keys.blobs import (
    CURVES_BY_KEY_TYPE,
    CURVES_BY_NAME,
    ED25519,
    PLAIN_KEY_TYPES,
    RSA,
    PrivateKey,
    blob_key_type,
    safe_type_name,
)
from secretivex.keys.errors import KeyFormatError, KeyLoadError
from secretivex.keys.software import SoftwareKey

#: Real key files are a few KiB (16384-bit RSA is ~12 KiB); refuse anything absurd.
MAX_KEY_FILE_BYTES = 256 * 1024

_OPENSSH_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_RE = re.compile(
    rb"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", re.DOTALL
)
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_PEM_BEGIN_RE = re.compile(rb"-----BEGIN (RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY-----")
_SNIFF_RE = re.compile(rb"\s*-----BEGIN ((OPENSSH|RSA|EC|DSA|ENCRYPTED) )?PRIVATE KEY-----")
_LOCKED_HINT = "encrypted key needs a passphrase (set passphrase_env or passphrase_file)"

#: How many length-prefixed private fields precede the comment, per key type.
_PRIVATE_FIELDS = {ED25519: 2, RSA: 6, **dict.fromkeys(CURVES_BY_KEY_TYPE, 3)}


class _NotRegularFileError(OSError):
    """The path is a directory, FIFO, socket or device: never read it as a key."""


def _read_regular(path: Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes of a regular file.

    Opened non-blocking and checked with fstat, so a FIFO or socket in a scanned
    directory (``~/.ssh`` often holds agent sockets) can neither hang nor be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise _NotRegularFileError(path)
        return handle.read(limit)


#: Files in a key directory that are never private keys, whatever their first bytes say.
SKIPPED_NAMES = frozenset(
    {
        "known_hosts",
        "known_hosts.old",
        "config",
        "authorized_keys",
        "authorized_keys2",
        "environment",
        "rc",
    }
)


def may_be_key_file(path: Path) -> bool:
    """Whether a directory scan should look at ``path`` at all: not a ``.pub``, not a
    dotfile, not one of the well-known non-key files of ``~/.ssh``."""
    name = path.name
    return not (name in SKIPPED_NAMES or name.endswith(".pub") or name.startswith("."))


def looks_like_private_key(path: Path) -> bool:
    """Cheap sniff of a file's first bytes, for directory scans (no parsing, no errors)."""
    try:
        head = _read_regular(path, 64)
    except OSError:
        return False
    return _SNIFF_RE.match(head) is not None


def is_encrypted_key_file(path: Path) -> bool:
    """True if the key file needs a passphrase; False if not, or if it is unreadable."""
    try:
        data = _read(path)
    except KeyLoadError:
        return False
    if _OPENSSH_BEGIN in data:
        try:
            return _parse_openssh_container(data).encrypted
        except KeyFormatError:
            return False
    return _pem_encrypted(data)


def load_private_key_file(path: Path, passphrase: bytes | None = None) -> SoftwareKey:
    """Load a private key file; attach ``<path>-cert.pub`` when it certifies that key.

    ``passphrase`` is used only if the file is encrypted, so one passphrase may be
    given for a directory of mixed keys. The comment is the one embedded in an
    OpenSSH key, else the one in ``<path>.pub`` (encrypted and PEM keys), else the
    path. A certificate that is unreadable, does not verify or certifies another key
    is ignored and explained in ``SoftwareKey.cert_warning``.
    """
    data = _read(path)
    if _OPENSSH_BEGIN in data:
        private_key, comment = _load_openssh(path, data, passphrase)
    elif _PEM_BEGIN_RE.search(data):
        private_key, comment = _load_pem(path, data, passphrase)
    else:
        raise KeyLoadError(f"{path}: not an OpenSSH private key")

    try:
        key = SoftwareKey(private_key, "")
    except KeyFormatError as exc:
        raise KeyLoadError(f"{path}: {exc}") from None
    if not comment:
        comment = _comment_from_pub_file(path, key.plain_public_blob) or str(path)
    key.comment = comment
    return _attach_certificate(path, key)


def _read(path: Path) -> bytes:
    try:
        data = _read_regular(path, MAX_KEY_FILE_BYTES + 1)
    except _NotRegularFileError:
        raise KeyLoadError(f"{path}: not a regular file") from None
    except FileNotFoundError:
        raise KeyLoadError(f"{path}: no such file") from None
    except PermissionError:
        raise KeyLoadError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise KeyLoadError(f"{path}: is a directory") from None
    except OSError as exc:
        raise KeyLoadError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyLoadError(f"{path}: too large to be a key file")
    return data


@dataclass(frozen=True, slots=True)
class _Container:
    """What the unencrypted header of an ``openssh-key-v1`` file says."""

    cipher: str
    public_blob: bytes
    comment: str | None  # None when encrypted (or unreadable)

    @property
    def encrypted(self) -> bool:
        return self.cipher != "none"


def _parse_openssh_container(data: bytes) -> _Container:
    """Read the cipher, the public key and (if unencrypted) the comment (PROTOCOL.key)."""
    match = _OPENSSH_RE.search(data)
    if match is None:
        raise KeyFormatError("no END line")
    try:
        raw = binascii.a2b_base64(match.group(1))
    except binascii.Error:
        raise KeyFormatError("bad base64") from None
    if not raw.startswith(_OPENSSH_MAGIC):
        raise KeyFormatError("bad magic")
    reader = Reader(raw[len(_OPENSSH_MAGIC) :])
    cipher = reader.string().decode("ascii", "replace")
    reader.string()  # kdf name
    reader.string()  # kdf options
    if reader.u32() != 1:
        raise KeyFormatError("more than one key")
    public_blob = reader.string()
    private_section = reader.string()
    comment = None
    if cipher == "none":
        comment = _embedded_comment(private_section)
    return _Container(cipher, public_blob, comment)


def _embedded_comment(section: bytes) -> str | None:
    try:
        reader = Reader(section)
        reader.u32()
        reader.u32()
        fields = _PRIVATE_FIELDS.get(reader.string().decode("ascii", "replace"))
        if fields is None:
            return None
        for _ in range(fields):
            reader.string()
        return reader.string().decode("utf-8", "replace")
    except WireError:
        return None


def _load_openssh(path: Path, data: bytes, passphrase: bytes | None) -> tuple[PrivateKey, str]:
    try:
        container = _parse_openssh_container(data)
        key_type = blob_key_type(container.public_blob)
    except KeyFormatError:
        raise KeyLoadError(f"{path}: corrupt OpenSSH private key") from None
    if key_type not in PLAIN_KEY_TYPES:
        raise KeyLoadError(f"{path}: unsupported key type {safe_type_name(key_type)}")
    if container.encrypted and not passphrase:
        raise KeyLoadError(f"{path}: {_LOCKED_HINT}")
    try:
        private_key = load_ssh_private_key(data, passphrase if container.encrypted else None)
    except UnsupportedAlgorithm:
        raise KeyLoadError(
            f"{path}: unsupported key encryption {safe_type_name(container.cipher)}"
        ) from None
    except (ValueError, InvalidTag):
        if container.encrypted:  # checkints differ / GCM tag fails: wrong passphrase
            raise KeyLoadError(f"{path}: wrong passphrase") from None
        raise KeyLoadError(f"{path}: corrupt OpenSSH private key") from None
    except TypeError:
        raise KeyLoadError(f"{path}: {_LOCKED_HINT}") from None
    return _supported(path, private_key), container.comment or ""


def _pem_encrypted(data: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def _load_pem(path: Path, data: bytes, passphrase: bytes | None) -> tuple[PrivateKey, str]:
    encrypted = _pem_encrypted(data)
    if encrypted and not passphrase:
        raise KeyLoadError(f"{path}: {_LOCKED_HINT}")
    try:
        private_key = load_pem_private_key(data, passphrase if encrypted else None)
    except UnsupportedAlgorithm:
        raise KeyLoadError(f"{path}: unsupported PEM key or encryption") from None
    except TypeError:
        raise KeyLoadError(f"{path}: {_LOCKED_HINT}") from None
    except ValueError:
        if encrypted:
            raise KeyLoadError(f"{path}: wrong passphrase") from None
        raise KeyLoadError(f"{path}: corrupt PEM private key") from None
    return _supported(path, private_key), ""


def _supported(path: Path, private_key: object) -> PrivateKey:
    """Narrow to the key kinds SSH agents sign with, naming the type otherwise."""
    if isinstance(private_key, Ed25519PrivateKey | rsa.RSAPrivateKey):
        return private_key
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if private_key.curve.name in CURVES_BY_NAME:
            return private_key
        raise KeyLoadError(f"{path}: unsupported elliptic curve {private_key.curve.name}")
    if isinstance(private_key, dsa.DSAPrivateKey):
        raise KeyLoadError(f"{path}: unsupported key type ssh-dss")
    if isinstance(private_key, ed448.Ed448PrivateKey):
        raise KeyLoadError(f"{path}: unsupported key type ssh-ed448")
    raise KeyLoadError(f"{path}: unsupported key type {type(private_key).__name__}")


def _read_public_line(path: Path) -> tuple[str, bytes, str] | None:
    """``(type, blob, comment)`` from a one-line OpenSSH public key file, or None."""
    try:
        text = _read_regular(path, 64 * 1024).decode("utf-8")
        parts = text.strip().split(None, 2)
        if len(parts) < 2:
            return None
        blob = binascii.a2b_base64(parts[1].encode("ascii"), strict_mode=True)
    except (OSError, UnicodeError, ValueError):
        return None
    comment = parts[2].splitlines()[0].strip() if len(parts) == 3 else ""
    return parts[0], blob, comment


def _comment_from_pub_file(path: Path, plain_blob: bytes) -> str | None:
    """The comment in ``<path>.pub`` if that file holds the same key."""
    line = _read_public_line(path.with_name(path.name + ".pub"))
    if line is None or line[1] != plain_blob:
        return None
    return line[2] or None


def _attach_certificate(path: Path, key: SoftwareKey) -> SoftwareKey:
    """Attach ``<path>-cert.pub`` as ssh-add does; explain in cert_warning if unusable."""
    cert_path = path.with_name(path.name + "-cert.pub")
    if not cert_path.exists():
        return key
    line = _read_public_line(cert_path)
    if line is None:
        key.cert_warning = f"{cert_path}: not an OpenSSH certificate; ignored"
        return key
    try:
        certified = SoftwareKey(key.private_key, key.comment, certificate=line[1])
    except KeyFormatError as exc:
        key.cert_warning = f"{cert_path}: {exc}; ignored"
        return key
    return certified
