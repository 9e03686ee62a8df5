"""The agent and its configuration: refuse to start on a bad config, reload on SIGHUP."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from harness import (
    SECRETIVEX,
    fingerprint_of,
    keygen,
    require_tool,
    run,
    running_agent,
    verify_ssh_signature,
    wait_until,
)

pytestmark = pytest.mark.openssh


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen")


def _listed(agent_env: dict[str, str], sock: Path | None = None) -> set[str]:
    env = dict(agent_env)
    if sock is not None:
        env["SSH_AUTH_SOCK"] = str(sock)
    out = run(["ssh-add", "-l"], env=env, check=False).stdout
    return {line.split()[1] for line in out.splitlines() if "SHA256:" in line}


def test_agent_refuses_invalid_config_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("agent:\n  max_connections: many\n  colour: blue\n")
    proc = subprocess.run(
        [SECRETIVEX, "agent", "--config", str(config), "--socket", str(tmp_path / "a.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "agent.max_connections" in proc.stderr
    assert "agent.colour" in proc.stderr
    assert str(config) in proc.stderr
    assert not (tmp_path / "a.sock").exists()


def test_sighup_applies_a_valid_config_and_keeps_connections(tmp_path: Path) -> None:
    one = keygen(tmp_path, "one", "ed25519")
    two = keygen(tmp_path, "two", "ecdsa", 256)
    extra_sock = tmp_path / "extra" / "team.sock"
    config = tmp_path / "config.yaml"
    config.write_text(f"stores:\n  - type: file\n    paths: [{one}]\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        from secretivex.client import SyncAgentClient

        with SyncAgentClient.connect(str(agent.socket)) as held:
            assert _listed(agent.env) == {fingerprint_of(one.with_suffix(".pub"))}
            config.write_text(
                f"stores:\n  - type: file\n    paths: [{one}, {two}]\n"
                f"listeners:\n  - socket: {extra_sock}\n    keys: ['type:ecdsa-sha2-nistp256']\n"
            )
            agent.signal(signal.SIGHUP)
            both = {
                fingerprint_of(one.with_suffix(".pub")),
                fingerprint_of(two.with_suffix(".pub")),
            }
            assert wait_until(lambda: _listed(agent.env) == both)
            assert wait_until(extra_sock.exists)
            assert _listed(agent.env, extra_sock) == {fingerprint_of(two.with_suffix(".pub"))}
            # The connection opened before the reload still works.
            blob = held.list_identities()[0].blob
            verify_ssh_signature(blob, b"after reload", held.sign(blob, b"after reload"))
            # Listener removed on the next reload; its socket file goes away.
            config.write_text(f"stores:\n  - type: file\n    paths: [{two}]\n")
            agent.signal(signal.SIGHUP)
            assert wait_until(lambda: not extra_sock.exists())
            assert wait_until(
                lambda: _listed(agent.env) == {fingerprint_of(two.with_suffix(".pub"))}
            )
        assert "configuration reloaded" in agent.log()


def test_sighup_rejects_an_invalid_config_and_keeps_the_old_one(tmp_path: Path) -> None:
    key = keygen(tmp_path, "steady", "ed25519")
    config = tmp_path / "config.yaml"
    config.write_text(f"stores:\n  - type: file\n    paths: [{key}]\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        fp = fingerprint_of(key.with_suffix(".pub"))
        assert _listed(agent.env) == {fp}
        config.write_text("stores:\n  - type: file\n    paths: relative/oops\n  - type: nope\n")
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "reload rejected" in agent.log())
        assert agent.proc.poll() is None
        assert _listed(agent.env) == {fp}
        data = tmp_path / "msg"
        data.write_text("still signing")
        only_pub = tmp_path / "only.pub"
        only_pub.write_text(key.with_suffix(".pub").read_text())
        run(
            ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(only_pub), str(data)],
            env=agent.env,
        )
