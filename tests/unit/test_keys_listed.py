"""keys.listed: the check on keys listed from elsewhere agrees with OpenSSH's own parser.

``ssh-keygen -l`` parses a public key line with ``sshkey_from_blob`` (for certificates
``cert_parse``, CA signature included), the same parser ``ssh_fetch_identitylist`` uses.
Every blob and every mutation of it must get the same verdict from both.
"""

from __future__ import annotations

import base64
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from secretivex.keys import KeyFormatError
from secretivex.keys.listed import MAX_LISTED_COMMENT_BYTES, check_listed_blob, listed_comment


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _type(blob: bytes) -> str:
    return blob[4 : 4 + struct.unpack(">I", blob[:4])[0]].decode("ascii", "replace")


def _openssh_accepts(tmp: Path, blob: bytes) -> bool:
    probe = tmp / "probe.pub"
    probe.write_text(f"{_type(blob)} {base64.b64encode(blob).decode()} c\n")
    return (
        subprocess.run(["ssh-keygen", "-l", "-f", str(probe)], capture_output=True).returncode == 0
    )


def _ours(blob: bytes) -> bool:
    try:
        check_listed_blob(blob)
    except KeyFormatError:
        return False
    return True


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    d = tmp_path_factory.mktemp("listed")

    def keygen(name: str, *args: str) -> Path:
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(d / name), *args], check=True)
        return d / f"{name}.pub"

    pubs = [
        keygen("ed", "-t", "ed25519"),
        keygen("p256", "-t", "ecdsa"),
        keygen("p521", "-t", "ecdsa", "-b", "521"),
        keygen("rsa", "-t", "rsa", "-b", "2048"),
    ]
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    sk = {
        "sk-ecdsa-sha2-nistp256@openssh.com": _s(b"nistp256") + _s(point) + _s(b"ssh:"),
        "sk-ssh-ed25519@openssh.com": _s(b"\x07" * 32) + _s(b"ssh:"),
    }
    for i, (name, fields) in enumerate(sk.items()):
        path = d / f"sk{i}.pub"
        path.write_text(f"{name} {base64.b64encode(_s(name.encode()) + fields).decode()} sk\n")
        pubs.append(path)
    certs = []
    for ca in ("ed", "p256", "rsa"):
        for pub in list(pubs):
            cert_args = ["-t", "rsa-sha2-512"] if ca == "rsa" else []
            sign = ["ssh-keygen", "-q", "-s", str(d / ca), "-I", "id", "-n", "a,b"]
            subprocess.run([*sign, "-O", "no-pty", *cert_args, str(pub)], check=True)
            cert = pub.with_name(pub.stem + "-cert.pub")
            certs.append(cert.read_bytes())
    out = [base64.b64decode(p.read_text().split()[1]) for p in pubs]
    return out + [base64.b64decode(c.split()[1]) for c in certs]


def test_every_well_formed_key_and_certificate_is_accepted(blobs: list[bytes]) -> None:
    for blob in blobs:
        check_listed_blob(blob)


def test_mutations_get_the_same_verdict_as_openssh(blobs: list[bytes], tmp_path: Path) -> None:
    rng = random.Random(7)
    for blob in blobs:
        mutants = [blob[: rng.randrange(len(blob))] for _ in range(3)] + [blob + b"\x00"]
        for _ in range(6):
            i = rng.randrange(len(blob))
            mutants.append(blob[:i] + bytes([blob[i] ^ (1 << rng.randrange(8))]) + blob[i + 1 :])
        for mutant in mutants:
            assert _ours(mutant) == _openssh_accepts(tmp_path, mutant), (
                _type(blob),
                len(mutant),
            )


def test_types_not_checked_here_are_refused() -> None:
    dss = _s(b"ssh-dss") + b"".join(_s(b"\x01" * 20) for _ in range(4))
    with pytest.raises(KeyFormatError, match="unsupported key type ssh-dss"):
        check_listed_blob(dss)
    with pytest.raises(KeyFormatError):
        check_listed_blob(_s(b"\x1b[2Jevil") + _s(b"x"))


def _signed_cert(key_id: bytes, principals: list[bytes]) -> bytes:
    ca = Ed25519PrivateKey.generate()
    ca_blob = _s(b"ssh-ed25519") + _s(ca.public_key().public_bytes_raw())
    body = _s(b"ssh-ed25519-cert-v01@openssh.com") + _s(b"n" * 32) + _s(b"\x01" * 32)
    body += b"\x00" * 8 + struct.pack(">I", 1) + _s(key_id)
    body += _s(b"".join(_s(p) for p in principals))
    body += b"\x00" * 8 + b"\xff" * 8 + _s(b"") + _s(b"") + _s(b"") + _s(ca_blob)
    return body + _s(_s(b"ssh-ed25519") + _s(ca.sign(body)))


def test_certificate_limits_match_openssh(tmp_path: Path) -> None:
    """Validly signed, yet refused by OpenSSH's cert_parse: more than 256 principals,
    a NUL in the key id. The check must refuse them too."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    fine = _signed_cert(b"id", [b"p%d" % i for i in range(256)])
    assert _ours(fine) and _openssh_accepts(tmp_path, fine)
    for bad in (
        _signed_cert(b"id", [b"p%d" % i for i in range(257)]),
        _signed_cert(b"i\x00d", [b"a"]),
        _signed_cert(b"id", [b"a\x00b"]),
    ):
        assert not _openssh_accepts(tmp_path, bad)
        with pytest.raises(KeyFormatError):
            check_listed_blob(bad)


def test_listed_comment_keeps_clean_comments() -> None:
    for comment in ("", "user@host", "Jürgen's key ✓", "a b\tc"[:3]):
        assert listed_comment(comment) == comment


def test_listed_comment_replaces_controls_and_caps_length() -> None:
    assert listed_comment("nul\x00in\x1b[31m\x07") == "nul?in?[31m?"
    assert listed_comment("a\u202eb\x9bc") == "a?b?c"
    raw = b"bad\xff\xfeutf8".decode("utf-8", "surrogateescape")
    assert listed_comment(raw) == "bad??utf8"
    long = listed_comment("é" * 5000)
    assert len(long.encode()) <= MAX_LISTED_COMMENT_BYTES and long.endswith("\u2026")
    assert listed_comment("x" * MAX_LISTED_COMMENT_BYTES) == "x" * MAX_LISTED_COMMENT_BYTES
