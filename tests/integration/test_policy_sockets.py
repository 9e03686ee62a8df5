"""Scoped sockets, peer checks, policy, the confirm hook, upstream proxying, destination
constraints and the audit log — each exercised with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    fingerprint_of,
    keygen,
    require_tool,
    run,
    running_agent,
    start_sshd,
    verify_ssh_signature,
)

pytestmark = pytest.mark.openssh


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen", "ssh")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policy-keys")
    keygen(d, "ci_deploy", "ed25519", comment="ci-deploy")
    keygen(d, "ci_release", "ecdsa", 256, comment="ci-release")
    keygen(d, "personal", "ed25519", comment="alice-personal")
    return d


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp dirs are 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="secretivex-shared-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def _fps(agent_env: dict[str, str], sock: Path) -> set[str]:
    out = run(["ssh-add", "-l"], env=dict(agent_env, SSH_AUTH_SOCK=str(sock)), check=False)
    return {
        line.split()[1]
        for line in out.stdout.splitlines()
        if line.startswith(("256", "384", "3072"))
    }


def _sign(
    agent_env: dict[str, str], sock: Path, pub: Path, tmp: Path
) -> subprocess.CompletedProcess[str]:
    data = tmp / f"data-{time.monotonic_ns()}"
    data.write_text("payload")
    only_pub = tmp / f"only-{time.monotonic_ns()}.pub"
    only_pub.write_text(pub.read_text())
    return run(
        ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(only_pub), str(data)],
        env=dict(agent_env, SSH_AUTH_SOCK=str(sock)),
        check=False,
    )


def _raw_sign(sock: Path, pub: Path) -> bool:
    """A sign request for ``pub`` sent straight to ``sock`` (no listing first)."""
    from base64 import b64decode

    from secretivex.client import AgentFailure, SyncAgentClient

    blob = b64decode(pub.read_text().split()[1])
    with SyncAgentClient.connect(str(sock)) as client:
        try:
            signature = client.sign(blob, b"direct request")
        except AgentFailure:
            return False
    verify_ssh_signature(pub, b"direct request", signature)  # a real signature by that key
    return True


def _audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_scoped_socket_refuses_a_direct_sign_request(tmp_path: Path, keys: Path) -> None:
    """A protocol-level poke (tests/scenarios/scoped_listeners.txt has the ssh-add
    session): a sign request for an out-of-scope key sent straight to the scoped socket,
    with no listing first, is refused and audited as scope_denied; the main socket
    signs it."""
    ci_sock = tmp_path / "ci.sock"
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{keys}]\n"
        f"listeners:\n  - socket: {ci_sock}\n    keys: ['comment:ci-*']\n"
        f"audit:\n  path: {audit}\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        assert not _raw_sign(ci_sock, keys / "personal.pub")
        assert _raw_sign(ci_sock, keys / "ci_deploy.pub")
        assert _raw_sign(agent.socket, keys / "personal.pub")
    denied = [r for r in _audit(audit) if r["outcome"] == "scope_denied"]
    assert [(r["listener"], r["request"]) for r in denied] == [("listener-0", "sign")]
    assert denied[0]["key"] == fingerprint_of(keys / "personal.pub")
    assert denied[0]["peer_uid"] == os.getuid()


def test_peer_uid_refused_unless_allowed(tmp_path: Path, keys: Path, shared_dir: Path) -> None:
    require_tool("setpriv")
    open_sock = shared_dir / "open.sock"
    allowed_sock = shared_dir / "allowed.sock"
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{keys / 'ci_deploy'}]\n"
        f"listeners:\n"
        f"  - socket: {open_sock}\n    mode: '0666'\n"
        f"  - socket: {allowed_sock}\n    mode: '0666'\n    peers: {{uids: [65534]}}\n"
        f"audit:\n  path: {audit}\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        as_nobody = [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "ssh-add",
            "-l",
        ]
        refused = run(
            as_nobody, env=dict(agent.env, SSH_AUTH_SOCK=str(open_sock), HOME="/"), check=False
        )
        assert refused.returncode != 0
        allowed = run(as_nobody, env=dict(agent.env, SSH_AUTH_SOCK=str(allowed_sock), HOME="/"))
        assert fingerprint_of(keys / "ci_deploy.pub") in allowed.stdout
    denied = [r for r in _audit(audit) if r["outcome"] == "peer_denied"]
    assert denied and denied[0]["peer_uid"] == 65534


def _hook(tmp: Path, name: str, body: str) -> Path:
    script = tmp / name
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return script


def _wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.01)


def test_pending_confirmation_does_not_block_other_clients(tmp_path: Path, keys: Path) -> None:
    """While one client's confirmation is pending (the hook is running and will not
    finish until the test says so), another client signs again and again; only then is
    the hook released. Events and ordering only: no rates, no sleeps to order things."""
    started, release = tmp_path / "hook-started", tmp_path / "hook-release"
    hook = _hook(
        tmp_path,
        "held-allow.sh",
        # (gives up after ~20 s by itself, so an agent that blocks fails instead of hanging)
        f"touch '{started}'\ni=0\n"
        f"while [ ! -e '{release}' ] && [ $i -lt 1000 ]; do sleep 0.02; i=$((i+1)); done\nexit 0",
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{keys}]\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n    keys: ['comment:ci-release']\n"
    )
    from secretivex.client import SyncAgentClient

    events: list[str] = []
    result: dict[str, bytes | BaseException] = {}
    with running_agent(tmp_path, "--config", str(config)) as agent:

        def confirm_needed() -> None:
            try:
                with SyncAgentClient.connect(str(agent.socket)) as client:
                    blob = next(
                        i.blob for i in client.list_identities() if i.comment == "ci-release"
                    )
                    result["signature"] = client.sign(blob, b"needs a yes")
            except BaseException as exc:  # reported by the main thread
                result["error"] = exc
            events.append("confirmed-sign-returned")

        waiting = threading.Thread(target=confirm_needed)
        waiting.start()
        try:
            _wait_for_file(started)  # the confirmation is now pending
            with SyncAgentClient.connect(str(agent.socket)) as client:
                blob = next(i.blob for i in client.list_identities() if i.comment == "ci-deploy")
                for n in range(20):
                    data = b"meanwhile %d" % n
                    verify_ssh_signature(keys / "ci_deploy.pub", data, client.sign(blob, data))
                    events.append("other-signed")
            assert waiting.is_alive() and not release.exists()
            events.append("released")
        finally:
            release.touch()
            waiting.join(30)
    assert not waiting.is_alive()
    assert "error" not in result, result.get("error")
    assert events == ["other-signed"] * 20 + ["released", "confirmed-sign-returned"]
    signature = result["signature"]
    assert isinstance(signature, bytes)
    verify_ssh_signature(keys / "ci_release.pub", b"needs a yes", signature)


@pytest.fixture()
def openssh_agent(tmp_path: Path, keys: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    sock = tmp_path / "upstream" / "ssh-agent.sock"
    sock.parent.mkdir(mode=0o700)
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        for name in ("ci_deploy", "ci_release", "personal"):
            run(["ssh-add", "-q", str(keys / name)], env=env)
        yield sock, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


def test_upstream_proxy_filters_keys(
    tmp_path: Path,
    keys: Path,
    shared_dir: Path,
    openssh_agent: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    upstream, upstream_proc = openssh_agent
    container_sock = shared_dir / "container.sock"
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"agent:\n  sign_timeout_ms: 1000\n"
        f"stores:\n  - type: upstream\n    socket: {upstream}\n    timeout_ms: 3000\n"
        f"listeners:\n  - socket: {container_sock}\n    keys: ['comment:ci-deploy']\n"
        f"audit:\n  path: {audit}\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        assert _fps(agent.env, agent.socket) == {fingerprint_of(p) for p in keys.glob("*.pub")}
        assert _fps(agent.env, container_sock) == {fingerprint_of(keys / "ci_deploy.pub")}
        assert _sign(agent.env, container_sock, keys / "ci_deploy.pub", tmp_path).returncode == 0
        assert _sign(agent.env, container_sock, keys / "personal.pub", tmp_path).returncode != 0
        assert not _raw_sign(container_sock, keys / "personal.pub")
        # A stalled upstream: the sign fails at sign_timeout_ms, the agent keeps serving.
        upstream_proc.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        assert _sign(agent.env, agent.socket, keys / "personal.pub", tmp_path).returncode != 0
        assert time.monotonic() - t0 < 8
        upstream_proc.send_signal(signal.SIGCONT)
        # The upstream dies: failure replies and empty listing, never a crash; it comes back.
        upstream_proc.terminate()
        upstream_proc.wait(10)
        # The listing is refreshed in the background (refresh_ms, default 1 s).
        _eventually(lambda: _fps(agent.env, agent.socket) == set())
        assert agent.proc.poll() is None
        restarted = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(upstream)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            run(
                ["ssh-add", "-q", str(keys / "ci_deploy")],
                env=dict(os.environ, SSH_AUTH_SOCK=str(upstream)),
            )
            want = {fingerprint_of(keys / "ci_deploy.pub")}
            _eventually(lambda: _fps(agent.env, container_sock) == want)
        finally:
            restarted.terminate()
            restarted.wait(10)
    outcomes = {r["outcome"] for r in _audit(audit) if r["request"] == "sign"}
    assert {"ok", "scope_denied", "timeout"} <= outcomes


def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_max_connections_closes_extra_connections(tmp_path: Path, keys: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"agent:\n  max_connections: 2\nstores:\n  - type: file\n    paths: [{keys}]\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        held = []
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(agent.socket))
            s.sendall(b"\x00\x00\x00\x01\x0b")
            s.recv(65536)
            held.append(s)
        out = agent.ssh_add("-l", check=False)
        assert out.returncode != 0  # the third connection is closed
        for s in held:
            s.close()
        time.sleep(0.2)
        assert agent.ssh_add("-l").returncode == 0


def _ssh_via(
    sshd_port: int, alias: str, known_hosts: Path, agent: AgentProcess
) -> subprocess.CompletedProcess[str]:
    return run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(sshd_port),
            "-o",
            "BatchMode=yes",
            "-o",
            f"HostKeyAlias={alias}",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "ConnectTimeout=10",
            f"{os.environ.get('USER', 'root')}@127.0.0.1",
            "echo ok",
        ],
        env=agent.env,
        check=False,
    )


def test_destination_constraints_with_ssh_add_h(tmp_path: Path) -> None:
    require_tool("/usr/sbin/sshd")
    key = keygen(tmp_path, "dest", "ed25519", comment="dest-key")
    pub = key.with_suffix(".pub").read_text().strip()
    allowed = start_sshd(tmp_path, [pub], name="allowed")
    other = start_sshd(tmp_path, [pub], name="other")
    known = tmp_path / "known_hosts"
    known.write_text(
        f"allowed-host {' '.join(allowed.host_key_pub.read_text().split()[:2])}\n"
        f"other-host {' '.join(other.host_key_pub.read_text().split()[:2])}\n"
    )
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: []\naudit:\n  path: {audit}\n")
    try:
        with running_agent(tmp_path, "--config", str(config)) as agent:
            agent.ssh_add("-H", str(known), "-h", "allowed-host", str(key))
            assert "dest-key" in agent.ssh_add("-l").stdout
            ok = _ssh_via(allowed.port, "allowed-host", known, agent)
            assert ok.returncode == 0, ok.stderr
            assert "ok" in ok.stdout
            refused = _ssh_via(other.port, "other-host", known, agent)
            assert refused.returncode != 0
            # Signing arbitrary data with a destination-constrained key is refused too.
            assert _sign(agent.env, agent.socket, key.with_suffix(".pub"), tmp_path).returncode != 0
    finally:
        for server in (allowed, other):
            server.proc.terminate()
            server.proc.wait(10)
    outcomes = [r["outcome"] for r in _audit(audit) if r["request"] == "sign"]
    assert "ok" in outcomes and "destination_denied" in outcomes
