"""Item 5: a listing never exceeds the 256 KiB agent message, even when configured
stores hold more keys than fit: the answer stops at the limit (earliest stores first)
with one rate-limited warning, instead of failing every client's listing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import require_tool, run, running_agent

from secretivex import protocol

pytestmark = pytest.mark.openssh

KEYS = 600
COMMENT = 450  # 600 x (8 + 51 + 450) bytes = ~305 KB of listing


def _key_dir(directory: Path) -> Path:
    directory.mkdir()
    for i in range(KEYS):
        key = Ed25519PrivateKey.generate()
        path = directory / f"id_{i:04d}"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        comment = f"bulk-{i:04d}-".ljust(COMMENT, "c")
        path.with_name(path.name + ".pub").write_text(f"{pub.decode()} {comment}\n")
    return directory


def test_oversized_configured_listing_is_truncated_not_failed(tmp_path: Path) -> None:
    require_tool("ssh-add")
    keys = _key_dir(tmp_path / "keys")
    config = tmp_path / "c.yaml"
    config.write_text(f"stores:\n  - type: file\n    paths: [{keys}]\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        lines = []
        for _ in range(3):
            listed = agent.ssh_add("-l")
            lines = listed.stdout.splitlines()
        export = run(["ssh-add", "-L"], env=agent.env).stdout.splitlines()
        log = agent.log()
    assert 400 < len(lines) < KEYS
    # What went on the wire fits in one message, and the earliest keys came first.
    size = 5
    for line in export:
        _kind, b64, comment = line.split(" ", 2)
        size += 8 + len(base64.b64decode(b64)) + len(comment.encode())
    assert size <= protocol.MAX_MESSAGE_SIZE
    assert export[0].split(" ", 2)[2].startswith("bulk-0000-")
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "key listing truncated" in line]
    assert len(warnings) == 1, (
        warnings
    )  # one line for three listings (cached frame, rate-limited warning)
    assert f"{KEYS - len(lines)} keys left out" in warnings[0]
