"""Issue 11 items 1 and 10: private key, passphrase and PIN files readable by group or
others are warned about (once, naming the file, never its content), and a PIN named by
``pin_env`` leaves the agent's environment yet still logs in after a reload rebuilds
the PKCS#11 store."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from harness import REQUIRE_ALL, SECRETIVEX, fingerprint_of, keygen, require_tool, running_agent
from sec_a_helpers import wait_until

try:
    from tests.integration.softhsm import SoftHsm, require_softhsm
except ImportError:  # tests/ is on sys.path (pytest pythonpath), not a package
    from integration.softhsm import SoftHsm, require_softhsm  # type: ignore[no-redef]

PASSPHRASE = "exposed-file-passphrase-31337"


def test_group_or_other_readable_key_and_passphrase_files_are_warned_about(
    tmp_path: Path,
) -> None:
    require_tool("ssh-keygen", "ssh-add")
    keys = tmp_path / "keys"
    keys.mkdir()
    loose = keygen(keys, "loose", passphrase=PASSPHRASE, comment="loose")
    loose.chmod(0o644)
    tight = keygen(keys, "tight", passphrase=PASSPHRASE, comment="tight")  # 0600
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    passphrase_file.chmod(0o640)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{keys}]\n    passphrase_file: {passphrase_file}\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        listing = agent.ssh_add("-l").stdout
        assert fingerprint_of(loose.with_suffix(".pub")) in listing  # warned, still served
        assert fingerprint_of(tight.with_suffix(".pub")) in listing
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in agent.log(), 30)
        log = agent.log()
    warnings = [line for line in log.splitlines() if "WARNING" in line and "readable by" in line]
    assert len(warnings) == 2, warnings  # once each, not again on reload
    assert any(str(loose) in w and "others" in w for w in warnings)
    assert any(str(passphrase_file) in w and "group" in w for w in warnings)
    assert not any(str(tight) in w for w in warnings)
    assert PASSPHRASE not in log


def test_pkcs11_pin_leaves_environment_and_relogin_after_reload_works(tmp_path: Path) -> None:
    require_softhsm()
    require_tool("ssh-add")
    hsm = SoftHsm.create(tmp_path / "softhsm")
    token = hsm.init_token("sec-a-pin", pin="pin-4711-secret")
    token.generate("EC:edwards25519", key_id="01", label="ed")

    def write(name: str) -> Path:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"stores:\n  - type: pkcs11\n    name: {name}\n    module: {hsm.module}\n"
            f"    token_label: {token.label}\n    pin_env: SEC_A_PKCS11_PIN\n"
        )
        return cfg

    env = {"SOFTHSM2_CONF": str(hsm.conf), "SEC_A_PKCS11_PIN": token.pin}
    with running_agent(tmp_path, "--config", str(write("first")), env=env) as agent:
        before = agent.ssh_add("-l").stdout
        assert "ED25519" in before
        environ = Path(f"/proc/{agent.proc.pid}/environ").read_bytes()
        assert token.pin.encode() not in environ
        # A changed store config builds a new store object: it logs in with the PIN the
        # agent kept in memory, although the variable is gone from its environment.
        write("second")
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in agent.log(), 30), agent.log()
        assert agent.ssh_add("-l").stdout == before
        assert "PIN environment variable" not in agent.log()


def test_a_loose_key_on_a_read_only_mount_gets_advice_that_can_be_followed(
    tmp_path: Path,
) -> None:
    """A Kubernetes Secret (``defaultMode: 0440``) is a read-only mount: "chmod go-rwx
    it" cannot be done there, so the warning says where the mode is set instead."""
    require_tool("ssh-keygen", "unshare", "mount")
    if os.geteuid() != 0:
        reason = "needs root for a read-only bind mount in a private mount namespace"
        if REQUIRE_ALL:
            raise AssertionError(reason + " (SECRETIVEX_REQUIRE_ALL=1)")
        pytest.skip(reason)
    secret = tmp_path / "secret"
    secret.mkdir()
    key = keygen(secret, "id_ed25519", comment="from-a-secret")
    key.chmod(0o440)
    sock, log = tmp_path / "agent.sock", tmp_path / "agent.log"
    script = (
        f'mount --bind "{secret}" "{secret}" && mount -o remount,bind,ro "{secret}" && '
        f'exec "{SECRETIVEX}" agent --socket "{sock}" --key "{key}"'
    )
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "c")}
    with log.open("wb") as err:
        proc = subprocess.Popen(["unshare", "-m", "sh", "-c", script], env=env, stderr=err)
    try:
        assert wait_until(lambda: sock.exists() or proc.poll() is not None, 30)
        assert proc.poll() is None, log.read_text()  # stores open before the socket binds
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    warnings = [line for line in log.read_text().splitlines() if "readable by group" in line]
    assert len(warnings) == 1, log.read_text()
    assert "read-only mount" in warnings[0] and "defaultMode" in warnings[0]
    assert "chmod go-rwx" not in warnings[0]
