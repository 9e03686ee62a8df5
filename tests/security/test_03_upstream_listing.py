"""Keys the agent lists but did not build (an upstream agent's, a token's) cannot break
the listing of every other key, and an upstream that is the agent itself is caught.

OpenSSH's clients (``ssh_fetch_identitylist``) reject the WHOLE identities answer when
one key of a type they know fails to parse, a certificate's CA signature does not
verify or a comment holds a NUL. A real agent serves a file key next to a lying
upstream agent (or a SoftHSM token) that lists such keys; the real ``ssh-add`` must
still list the good keys, and the bad ones must be counted in health and logged.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from pathlib import Path

import pytest
from harness import SECRETIVEX, AgentProcess, keygen, require_tool, run, running_agent
from sec_c_helpers import lying_upstream

try:
    from tests.integration.softhsm import SoftHsm, require_softhsm
except ImportError:  # tests/ is on sys.path (pytest pythonpath), not a package
    from integration.softhsm import SoftHsm, require_softhsm  # type: ignore[no-redef]

pytestmark = pytest.mark.openssh


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen")


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _blob(pub: Path) -> bytes:
    return base64.b64decode(pub.read_text().split()[1])


def _file_then_upstream(tmp: Path, file_key: Path) -> tuple[Path, Path]:
    """A config serving ``file_key`` and then an upstream store ``up`` (refreshed every
    200 ms) at the returned socket path; returns (socket path, config path)."""
    upstream = tmp / "up.sock"
    config = tmp / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{file_key}]\n"
        f"  - type: upstream\n    name: up\n    socket: {upstream}\n    refresh_ms: 200\n"
    )
    return upstream, config


def _store_health(agent: AgentProcess, name: str) -> dict[str, object]:
    out = run(
        [SECRETIVEX, "client", "health", "--json", "--socket", str(agent.socket)], env=agent.env
    ).stdout
    (store,) = [s for s in json.loads(out)["agent"]["stores"] if s["name"] == name]
    return dict(store)


def _bad_blobs(tmp: Path) -> dict[str, bytes]:
    """Blobs of types OpenSSH knows that its clients refuse (each breaks ssh-add -l)."""
    keygen(tmp, "ca", "ed25519", comment="ca")
    keygen(tmp, "user", "ed25519", comment="user")
    run(["ssh-keygen", "-q", "-s", str(tmp / "ca"), "-I", "id", str(tmp / "user.pub")])
    cert = bytearray(_blob(tmp / "user-cert.pub"))
    cert[-1] ^= 1  # the CA signature no longer verifies
    ec = _blob(keygen(tmp, "ec", "ecdsa", comment="ec").with_suffix(".pub"))
    small_rsa = _s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(b"\x00" + b"\xc3" * 64)  # 512 bits
    return {
        "short ed25519": _s(b"ssh-ed25519") + _s(b"short"),
        "512-bit rsa": small_rsa,
        "truncated ecdsa": ec[:-7],
        "certificate with a bad signature": bytes(cert),
        "ed25519 with trailing bytes": _s(b"ssh-ed25519") + _s(b"\x01" * 32) + b"\x00",
    }


def test_upstream_keys_openssh_would_reject_are_left_out(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    file_key = keygen(keys, "file", "ed25519", comment="file-key")
    good = keygen(keys, "good", "ed25519", comment="upstream-good")
    bad = _bad_blobs(keys)
    for name, blob in bad.items():  # OpenSSH's own parser (sshkey_from_blob) refuses each
        probe = keys / "probe.pub"
        key_type = blob[4 : 4 + struct.unpack(">I", blob[:4])[0]].decode()
        probe.write_text(f"{key_type} {base64.b64encode(blob).decode()} x\n")
        checked = run(["ssh-keygen", "-l", "-f", str(probe)], check=False)
        assert checked.returncode != 0, name
    listed = [(b, name.encode()) for name, b in bad.items()] + [
        (_blob(good.with_suffix(".pub")), b"upstream-good")
    ]
    upstream, config = _file_then_upstream(tmp_path, file_key)
    with (
        lying_upstream(upstream, listed),
        running_agent(tmp_path, "--config", str(config)) as agent,
    ):
        time.sleep(1.0)  # several refreshes: the warning must not repeat
        out = agent.ssh_add("-l", check=False)
        assert out.returncode == 0, out.stderr
        assert "file-key" in out.stdout and "upstream-good" in out.stdout, out.stdout
        for name in bad:
            assert name not in out.stdout
        health = _store_health(agent, "up")
        log = agent.log()
    assert health["keys"] == 1 and health["detail"]["rejected_keys"] == len(bad), health  # type: ignore[index]
    warnings = [line for line in log.splitlines() if "OpenSSH clients would reject" in line]
    assert len(warnings) == 1, log
    assert f"listed {len(bad)} key(s)" in warnings[0] and "store up" in warnings[0]
    assert "SHA256:" in warnings[0]
    for blob in bad.values():  # no key bytes in the log
        assert base64.b64encode(blob).decode()[:24] not in log


def test_upstream_comments_cannot_break_or_spoof_the_listing(tmp_path: Path) -> None:
    """A NUL in a comment makes OpenSSH's clients reject the whole answer; escapes reach
    the terminal of whoever runs ssh-add -l; a 200 KiB comment would fill the answer."""
    keys = tmp_path / "keys"
    keys.mkdir()
    file_key = keygen(keys, "file", "ed25519", comment="file-key")
    blobs = [
        _blob(keygen(keys, f"k{i}", "ed25519", comment="x").with_suffix(".pub")) for i in range(3)
    ]
    comments = [b"nul\x00inside", b"esc\x1b[31mred\x07", b"long" + b"y" * 200_000]
    upstream, config = _file_then_upstream(tmp_path, file_key)
    with (
        lying_upstream(upstream, list(zip(blobs, comments, strict=True))),
        running_agent(tmp_path, "--config", str(config)) as agent,
    ):
        time.sleep(0.6)
        out = agent.ssh_add("-L", check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout
    text = out.stdout
    assert "nul?inside" in text and "esc?[31mred?" in text and "\x1b" not in text
    (long_line,) = [line for line in lines if " long" in line]
    comment = long_line.split(" ", 2)[2]
    assert len(comment.encode()) <= 1024 and comment.endswith("\u2026")


def test_upstream_that_is_the_agent_itself_is_degraded_with_a_reason(tmp_path: Path) -> None:
    """A symlink to the agent's own socket passes the config check (it compares paths);
    SO_PEERCRED at connect time catches it: degraded in health, one log line, no loop."""
    keys = tmp_path / "keys"
    keys.mkdir()
    file_key = keygen(keys, "file", "ed25519", comment="file-key")
    sock = tmp_path / "run" / "agent.sock"
    alias = tmp_path / "alias.sock"
    alias.symlink_to(sock)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: upstream\n    name: up\n    socket: {alias}\n    refresh_ms: 100\n"
        f"  - type: file\n    paths: [{file_key}]\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        deadline = time.monotonic() + 10
        while True:
            health = _store_health(agent, "up")
            if "leads back" in str(health.get("last_error")) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert health["state"] == "degraded" and health["keys"] == 0, health
        assert "leads back to this agent" in str(health["last_error"]), health
        time.sleep(1.0)  # ten refresh periods: no retry storm, no second log line
        started = time.monotonic()
        listed = agent.ssh_add("-l")
        assert "file-key" in listed.stdout
        assert time.monotonic() - started < 2
        log = agent.log()
    loops = [line for line in log.splitlines() if "leads back to this agent" in line]
    assert len(loops) == 1, log


def test_token_key_openssh_would_reject_is_skipped_and_labels_cleaned(tmp_path: Path) -> None:
    """A SoftHSM token holding a 512-bit RSA key (OpenSSH's clients refuse RSA under 1024
    bits, and with it the whole listing) and a key whose label has an escape sequence."""
    require_softhsm()
    hsm = SoftHsm.create(tmp_path / "softhsm")
    token = hsm.init_token("listing-ci")
    token.generate("rsa:512", key_id="01", label="small-rsa")
    token.generate("EC:edwards25519", key_id="02", label="ed\x1b[2Jlabel")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "stores:\n  - type: pkcs11\n    name: hsm\n"
        f"    module: {hsm.module}\n    token_label: {token.label}\n"
        "    pin_env: TEST_PKCS11_PIN\n"
    )
    env = {"SOFTHSM2_CONF": str(hsm.conf), "TEST_PKCS11_PIN": token.pin}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        out = agent.ssh_add("-l", check=False)
        log = agent.log()
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "ed?[2Jlabel" in out.stdout and "\x1b" not in out.stdout, out.stdout
    assert "small-rsa" not in out.stdout
    assert "RSA key too small" in log, log
