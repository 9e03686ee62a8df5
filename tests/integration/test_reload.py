"""SIGHUP applies every runtime-changeable setting to a running agent (issue 14 item 3).

One real agent process; each setting is changed through the config file and a SIGHUP,
and its effect is observed from outside: connections refused or closed, ssh-add
refused, signatures denied, files written. Settings with no outside effect short of a
hung token (max_signers, sign_timeout_ms, per-uid headroom) are read back from the
health document, which reports them from the objects that enforce them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from pathlib import Path

import pytest
from harness import keygen, require_tool, running_agent, wait_until

from secretivex.client import AgentError, AgentFailure, SyncAgentClient

pytestmark = pytest.mark.openssh

LIST_REQUEST = b"\x00\x00\x00\x01\x0b"  # SSH_AGENTC_REQUEST_IDENTITIES


def _answering(path: Path) -> socket.socket | None:
    """A connection that answered a listing (kept open), or None if the agent closed it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    try:
        s.sendall(LIST_REQUEST)
        head = s.recv(5)
    except OSError:
        head = b""
    if len(head) < 5 or head[4] != 12:
        s.close()
        return None
    size = int.from_bytes(head[:4], "big") - 1
    while size > 0:
        size -= len(s.recv(size))
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Whether the agent closes ``s`` within ``seconds`` (waits on the socket, no polling)."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _connections_served(path: Path, most: int) -> int:
    """How many connections, opened one after another, the agent serves at once."""
    held: list[socket.socket] = []
    try:
        for _ in range(most):
            conn = _answering(path)
            if conn is None:
                break
            held.append(conn)
        return len(held)
    finally:
        for conn in held:
            conn.close()


def _settle(agent, served: int = 0) -> None:  # type: ignore[no-untyped-def]
    """Wait until the agent counts only the connection that asks (closes are async)."""

    def quiet() -> bool:
        try:
            with SyncAgentClient.connect(str(agent.socket)) as client:
                return (client.health() or {}).get("connections") == 1 + served
        except AgentError:  # refused: the slots are not free yet
            return False

    assert wait_until(quiet), agent.log()


def _reload(agent, config: Path, text: str) -> None:  # type: ignore[no-untyped-def]
    before = agent.log().count("configuration reloaded")
    config.write_text(text)
    agent.signal(signal.SIGHUP)
    assert wait_until(lambda: agent.log().count("configuration reloaded") > before), agent.log()


def test_sighup_applies_every_runtime_setting(tmp_path: Path) -> None:
    require_tool("ssh-add", "ssh-keygen")
    key = keygen(tmp_path, "served", "ed25519")
    added = [keygen(tmp_path, f"added{i}", "ed25519") for i in range(2)]
    team = tmp_path / "team" / "team.sock"
    audit = tmp_path / "audit.jsonl"
    metrics = tmp_path / "metrics.json"
    deny = tmp_path / "deny.sh"
    deny.write_text("#!/bin/sh\nexit 1\n")
    deny.chmod(deny.stat().st_mode | stat.S_IXUSR)
    askpass = tmp_path / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho 1234\n")
    askpass.chmod(askpass.stat().st_mode | stat.S_IXUSR)
    config = tmp_path / "config.yaml"
    stores = f"stores:\n  - type: file\n    paths: [{key}]\n"

    def text(agent: str, listener_max: int, rest: str = "") -> str:
        return (
            f"agent:\n{agent}{stores}"
            f"listeners:\n  - socket: {team}\n    max_connections: {listener_max}\n{rest}"
        )

    before = (
        "  max_connections: 64\n  reserved_connections: 0\n  idle_timeout_ms: 0\n"
        "  frame_timeout_ms: 10000\n  max_buffered_bytes: 16777216\n  max_signers: 8\n"
        "  sign_timeout_ms: 0\n  max_added_keys: 100\n  listen_backlog: 128\n"
    )
    config.write_text(text(before, 8))
    with running_agent(tmp_path, "--config", str(config)) as agent:
        env = dict(agent.env, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
        with SyncAgentClient.connect(str(agent.socket)) as client:
            blob = client.list_identities()[0].blob
            client.sign(blob, b"before")
            limits = (client.health() or {})["limits"]
        assert limits["max_signers"] == 8 and limits["sign_timeout_ms"] == 0
        # Before: generous limits, no timeouts, adds allowed, nothing audited or written.
        assert _connections_served(agent.socket, 6) == 6
        _settle(agent)
        assert _connections_served(team, 3) == 3
        _settle(agent)
        idle = _answering(agent.socket)
        assert idle is not None and not _closed_within(idle, 0.8)
        idle.close()
        agent.ssh_add(str(added[0]))
        agent.ssh_add("-D")
        assert not audit.exists() and not metrics.exists()
        # The default allowlist admits /usr/lib/*: this file (not a module) fails later.
        agent.ssh_add("-s", "/usr/lib/os-release", check=False, extra_env=env)
        assert wait_until(lambda: "ssh-add -s /usr/lib/os-release" in agent.log())
        assert "/usr/lib/os-release not in pkcs11_allowlist" not in agent.log()

        after = (
            "  max_connections: 4\n  reserved_connections: 0\n  max_connections_per_uid: 3\n"
            "  idle_timeout_ms: 300\n  frame_timeout_ms: 300\n  max_buffered_bytes: 65536\n"
            "  max_signers: 3\n  sign_timeout_ms: 2500\n  max_added_keys: 1\n"
            "  default_lifetime: 3\n  pkcs11_allowlist: ['/opt/secretivex-none/*']\n"
            "  listen_backlog: 64\n"
        )
        rest = (
            f"policy:\n  confirm:\n    command: [{deny}]\n    keys: ['comment:nobody-*']\n"
            f"audit:\n  path: {audit}\n"
            f"metrics:\n  path: {metrics}\n  interval_ms: 200\n"
            "logging:\n  format: json\n"
        )
        _reload(agent, config, text(after, 1, rest))

        # Restart-only keys: one line naming each, and the socket keeps serving.
        warnings = [line for line in agent.log().splitlines() if "restart the agent" in line]
        assert len(warnings) == 1, agent.log()
        assert "agent.listen_backlog" in warnings[0] and "logging.format" in warnings[0]
        assert "max_connections" not in warnings[0]

        # agent.max_connections and listeners[].max_connections
        _settle(agent)
        assert _connections_served(agent.socket, 6) == 4
        _settle(agent)
        assert _connections_served(team, 3) == 1
        _settle(agent)
        # agent.idle_timeout_ms
        idle = _answering(agent.socket)
        assert idle is not None and _closed_within(idle, 5)
        idle.close()
        # agent.frame_timeout_ms: a frame started and never finished is cut off.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
            slow.connect(str(agent.socket))
            slow.sendall(b"\x00\x00\x00\x10\x0b")
            assert _closed_within(slow, 5)
        # agent.max_buffered_bytes: 100 KiB of an unfinished frame exceeds 64 KiB.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as big:
            big.connect(str(agent.socket))
            with contextlib.suppress(OSError):  # closed while sending: the refusal itself
                big.sendall((200 * 1024).to_bytes(4, "big") + b"\x11" * (100 * 1024))
            assert _closed_within(big, 5)
        # agent.max_added_keys and agent.default_lifetime
        agent.ssh_add(str(added[0]))
        refused = agent.ssh_add(str(added[1]), check=False)
        assert refused.returncode != 0
        assert wait_until(lambda: "added0" not in agent.ssh_add("-l", check=False).stdout, 15)
        # agent.pkcs11_allowlist: a module outside the new list is refused by name.
        agent.ssh_add("-s", "/usr/lib/os-release", check=False, extra_env=env)
        refusal = "/usr/lib/os-release not in pkcs11_allowlist"
        assert wait_until(lambda: refusal in agent.log()), agent.log()
        # max_signers / sign_timeout_ms / per-uid: from the objects that enforce them.
        with SyncAgentClient.connect(str(agent.socket)) as client:
            limits = (client.health() or {})["limits"]
            assert limits["max_signers"] == 3 and limits["sign_timeout_ms"] == 2500
            assert limits["max_connections_per_uid"] == 3
            client.sign(blob, b"not matched by confirm keys")
        # policy.confirm: keys matching the confirm matchers now need the (denying) hook.
        _reload(
            agent,
            config,
            text(after, 1, rest.replace("comment:nobody-*", "type:ssh-ed25519")),
        )
        with SyncAgentClient.connect(str(agent.socket)) as client, pytest.raises(AgentFailure):
            client.sign(blob, b"denied by the hook")
        # audit.path and metrics.path: written by the running agent after the reload.
        assert wait_until(lambda: audit.exists() and "confirm_denied" in audit.read_text())
        assert wait_until(lambda: metrics.exists() and metrics.stat().st_size > 0)
        # allow_add / allow_lock on the main socket.
        _reload(
            agent,
            config,
            text(after.replace("max_added_keys: 1", "allow_add: false\n  allow_lock: false"), 1),
        )
        assert agent.ssh_add(str(added[1]), check=False).returncode != 0
        assert agent.ssh_add("-x", check=False, extra_env=env).returncode != 0
        assert os.path.exists(agent.socket)
