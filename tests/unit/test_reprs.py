"""Identities read well in test failures: type, fingerprint and comment, no raw blob."""

from __future__ import annotations

from pathlib import Path

from harness import keygen

from secretivex.client import AgentIdentity
from secretivex.keys import Identity, load_private_key_file


def test_identity_reprs_name_the_key_not_its_bytes(tmp_path: Path) -> None:
    key = load_private_key_file(keygen(tmp_path, "repr", "ed25519", comment="deploy"), None)
    ident = Identity(blob=key.public_blob, comment="deploy", store="file-0", confirm=True)
    text = repr(ident)
    assert text == f"Identity(ssh-ed25519 {ident.fingerprint} 'deploy' store='file-0' confirm)"
    assert "\\x00" not in text and "b'" not in text
    listed = AgentIdentity(blob=key.public_blob, comment="deploy")
    assert repr(listed) == f"AgentIdentity(ssh-ed25519 {listed.fingerprint} 'deploy')"
    assert repr([listed]) == f"[AgentIdentity(ssh-ed25519 {listed.fingerprint} 'deploy')]"
    # Equality still compares the blob (repr changed, behaviour did not).
    assert listed == AgentIdentity(blob=key.public_blob, comment="deploy")
