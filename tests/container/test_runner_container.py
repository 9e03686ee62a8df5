"""(b) A host agent serves an unmodified CI-runner-like container through a listener.

The agent runs on the host (``secretivex agent`` subprocess, tests/harness.py); a
listener socket owned by the runner's uid/gid (1000:1000, mode 0660) with a key scope
(``comment:ci-*``) and a peer list (uid 1000) sits in a directory of its own, mounted
read-only into a ``--network none`` container running as uid 1000.
"""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from containerlib import RUNNER_GID, RUNNER_UID, SOFTHSM_IMAGE, container_exec
from harness import (
    AgentProcess,
    Sshd,
    keygen,
    require_tool,
    run,
    start_agent,
    start_sshd,
    wait_for_socket,
)

pytestmark = pytest.mark.container

CI_DIR = "/run/secretivex-ci"
CI_SOCK = f"{CI_DIR}/agent.sock"
RUNNER = f"{RUNNER_UID}:{RUNNER_GID}"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    keygen(directory, "ci_deploy", comment="ci-deploy")
    keygen(directory, "ci_rsa", "rsa", bits=3072, comment="ci-rsa")
    keygen(directory, "personal", comment="alice@laptop")
    return directory


@pytest.fixture
def host_agent(tmp_path: Path, keys: Path) -> Iterator[AgentProcess]:
    ci_dir = tmp_path / "ci"
    ci_dir.mkdir()
    ci_dir.chmod(0o755)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{keys}]\n"
        f"listeners:\n"
        f"  - socket: {ci_dir}/agent.sock\n"
        f'    mode: "0660"\n'
        f"    owner: {RUNNER_UID}\n"
        f"    group: {RUNNER_GID}\n"
        f'    keys: ["comment:ci-*"]\n'
        f"    peers: {{uids: [{RUNNER_UID}]}}\n"
        f"    allow_add: false\n"
        f"audit:\n  path: {tmp_path / 'audit.jsonl'}\n"
    )
    agent = _start_host_agent(tmp_path)
    try:
        yield agent
    finally:
        agent.stop()


def _start_host_agent(tmp_path: Path) -> AgentProcess:
    agent = start_agent(tmp_path, "--config", str(tmp_path / "agent.yaml"))
    try:
        wait_for_socket(tmp_path / "ci" / "agent.sock", proc=agent.proc)
    except AssertionError:
        agent.stop()
        raise
    return agent


def _audit(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _pub(keys: Path, name: str) -> str:
    return (keys / f"{name}.pub").read_text().strip()


def test_listener_socket_is_the_runners(host_agent: AgentProcess, tmp_path: Path) -> None:
    st = (tmp_path / "ci" / "agent.sock").stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (RUNNER_UID, RUNNER_GID, 0o660)


def test_runner_sees_only_the_scoped_keys_and_signs(
    host_agent: AgentProcess, runner_factory, tmp_path: Path, keys: Path
) -> None:
    runner = runner_factory({tmp_path / "ci": CI_DIR})
    env = {"SSH_AUTH_SOCK": CI_SOCK}

    whoami = container_exec(runner, "id -u; id -g", env=env)
    assert whoami.stdout.split() == [str(RUNNER_UID), str(RUNNER_GID)]

    listed = container_exec(runner, "ssh-add -l", env=env)
    assert listed.returncode == 0, listed.stderr
    comments = sorted(line.split()[2] for line in listed.stdout.splitlines())
    assert comments == ["ci-deploy", "ci-rsa"]  # not alice@laptop

    # The host's main socket (root's) still has all three.
    assert len(host_agent.ssh_add("-l").stdout.splitlines()) == 3

    # ssh-keygen -Y sign inside the runner with each scoped key; verified on the host.
    for name in ("ci_deploy", "ci_rsa"):
        line = _pub(keys, name)
        signed = container_exec(
            runner,
            f"cd /tmp && echo '{line}' > {name}.pub && echo payload-{name} > data-{name}"
            f" && ssh-keygen -Y sign -q -n file -f {name}.pub data-{name}"
            f" && cat data-{name}.sig",
            env=env,
        )
        assert signed.returncode == 0, signed.stderr
        allowed = tmp_path / f"allowed-{name}"
        allowed.write_text(f"runner@ci {line}\n")
        sig = tmp_path / f"{name}.sig"
        sig.write_text(signed.stdout)
        verified = run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "runner@ci", "-n", "file",
             "-s", str(sig)],
            input=f"payload-{name}\n".encode(),
        )  # fmt: skip
        assert "Good" in verified.stdout + verified.stderr

    # A key outside the scope is unknown there: ssh-keygen finds no such agent key.
    personal = _pub(keys, "personal")
    refused = container_exec(
        runner,
        f"cd /tmp && echo '{personal}' > p.pub && echo x > d"
        " && ssh-keygen -Y sign -q -n file -f p.pub d",
        env=env,
    )
    assert refused.returncode != 0
    # ssh-add cannot add or remove keys there (allow_add: false).
    assert container_exec(runner, "ssh-add -D", env=env).returncode != 0
    outcomes = {(r["request"], r["outcome"]) for r in _audit(tmp_path)}
    assert ("remove_all", "add_refused") in outcomes


def test_other_uids_are_refused(host_agent: AgentProcess, runner_factory, tmp_path: Path) -> None:
    runner = runner_factory({tmp_path / "ci": CI_DIR})
    env = {"SSH_AUTH_SOCK": CI_SOCK}

    # uid 2000 outside the socket's group: the file mode stops it.
    no_group = container_exec(runner, "ssh-add -l", user="2000:2000", env=env)
    assert no_group.returncode == 2
    assert "Permission denied" in no_group.stderr

    # uid 2000 *in* the socket's group passes the file mode; the peer check refuses it
    # (SO_PEERCRED: the agent sees uid 2000, not in peers.uids).
    in_group = container_exec(runner, "ssh-add -l", user=f"2000:{RUNNER_GID}", env=env)
    # Connected, then the agent hung up before reading: ssh-add reports "communication
    # with agent failed" (exit 1), or dies of SIGPIPE (141) if it was still writing.
    assert in_group.returncode in (1, 141), in_group
    assert in_group.stdout == ""
    denied = [r for r in _audit(tmp_path) if r["outcome"] == "peer_denied"]
    assert [(r["peer_uid"], r["peer_gid"]) for r in denied] == [(2000, RUNNER_GID)]

    # Root in the container (no user namespace) is root to the agent: always admitted,
    # but still confined to the socket's key scope.
    as_root = container_exec(runner, "ssh-add -l", user="0:0", env=env)
    assert as_root.returncode == 0, as_root.stderr
    assert sorted(line.split()[2] for line in as_root.stdout.splitlines()) == [
        "ci-deploy",
        "ci-rsa",
    ]


def test_runner_survives_an_agent_restart_with_a_directory_mount(
    host_agent: AgentProcess, runner_factory, tmp_path: Path
) -> None:
    """Mount the listener's directory, not its socket file.

    A restarted agent makes a new socket (a new inode) at the same path: a runner that
    mounted the directory sees it, one that bind-mounted the old socket file does not.
    """
    by_dir = runner_factory({tmp_path / "ci": CI_DIR})
    by_file = runner_factory({tmp_path / "ci" / "agent.sock": "/run/agent.sock"})
    assert container_exec(by_dir, "ssh-add -l", env={"SSH_AUTH_SOCK": CI_SOCK}).returncode == 0
    assert (
        container_exec(by_file, "ssh-add -l", env={"SSH_AUTH_SOCK": "/run/agent.sock"}).returncode
        == 0
    )

    host_agent.stop()
    restarted = _start_host_agent(tmp_path)
    try:
        again = container_exec(by_dir, "ssh-add -l", env={"SSH_AUTH_SOCK": CI_SOCK})
        assert again.returncode == 0, again.stderr
        stale = container_exec(by_file, "ssh-add -l", env={"SSH_AUTH_SOCK": "/run/agent.sock"})
        assert stale.returncode == 2
        assert "Connection refused" in stale.stderr
    finally:
        restarted.stop()


# --- bonus: ssh from inside the runner -------------------------------------------------
#
# With --network none the runner cannot reach the host's sshd over TCP. OpenSSH's
# ProxyCommand does not need a network: the runner's ssh talks to a Unix socket in a
# mounted directory, and a relay in this test process forwards that to the sshd on
# 127.0.0.1. The SSH session (and its agent authentication through the listener) is
# end to end; only the transport hop is a socket instead of TCP.

PROXY = """\
import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def unix_to_tcp_relay(path: Path, port: int) -> Iterator[None]:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    path.chmod(0o666)
    server.listen(4)
    conns: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                upstream = socket.create_connection(("127.0.0.1", port), timeout=10)
                upstream.settimeout(None)
                conns.extend((client, upstream))
                threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        for conn in conns:
            conn.close()
        thread.join(5)


@contextlib.contextmanager
def _sshd(tmp_path: Path, authorized: list[str], name: str) -> Iterator[Sshd]:
    sshd = start_sshd(tmp_path, authorized, name=name)
    try:
        yield sshd
    finally:
        sshd.proc.terminate()
        sshd.proc.wait(10)


def test_ssh_from_inside_the_runner(
    host_agent: AgentProcess, runner_factory, tmp_path: Path, keys: Path
) -> None:
    require_tool("sshd", "ssh")
    relay_dir = tmp_path / "relay"
    relay_dir.mkdir()
    relay_dir.chmod(0o755)
    (relay_dir / "proxy.py").write_text(PROXY)
    (relay_dir / "proxy.py").chmod(0o644)
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in ("ci", "personal"):
            key = "ci_deploy" if name == "ci" else "personal"
            sshd = stack.enter_context(_sshd(tmp_path, [_pub(keys, key)], f"sshd-{name}"))
            stack.enter_context(unix_to_tcp_relay(relay_dir / f"{name}.sock", sshd.port))
            known = relay_dir / f"{name}.known_hosts"
            known.write_text(sshd.known_hosts.read_text())
            known.chmod(0o644)
            servers[name] = sshd
        runner = runner_factory({tmp_path / "ci": CI_DIR, relay_dir: "/run/relay"})

        def ssh_in_runner(name: str) -> subprocess.CompletedProcess[str]:
            sshd = servers[name]
            command = (
                f"ssh -F /dev/null -p {sshd.port} -o BatchMode=yes -o ConnectTimeout=10"
                f" -o UserKnownHostsFile=/run/relay/{name}.known_hosts"
                " -o StrictHostKeyChecking=yes"
                f" -o 'ProxyCommand=python3 /run/relay/proxy.py /run/relay/{name}.sock'"
                f" {sshd.user}@127.0.0.1 echo from-the-runner"
            )
            return container_exec(runner, command, env={"SSH_AUTH_SOCK": CI_SOCK})

        result = ssh_in_runner("ci")
        log = servers["ci"].log_path.read_text()
        assert result.returncode == 0, result.stderr + log
        assert result.stdout.strip() == "from-the-runner"
        fingerprint = run(["ssh-keygen", "-lf", str(keys / "ci_deploy.pub")]).stdout.split()[1]
        assert fingerprint in log

        # A server that accepts only the personal key: the runner cannot log in (the key
        # is outside its socket's scope), the host user on the main socket can.
        refused = ssh_in_runner("personal")
        assert refused.returncode == 255
        assert "Permission denied (publickey)" in refused.stderr
        host = run([*servers["personal"].ssh_argv(), "true"], env=host_agent.env, check=False)
        assert host.returncode == 0, host.stderr


@pytest.fixture
def shared_volume(docker_ready: None) -> Iterator[str]:
    """A named volume, removed after everything that mounts it (request it first)."""
    import docker

    client = docker.from_env()
    volume = client.volumes.create(
        f"secretivex-test-run-{uuid.uuid4().hex[:8]}", labels={"org.secretivex.test": "run"}
    )
    try:
        yield volume.name
    finally:
        try:
            volume.remove(force=True)
        finally:
            client.close()


def test_appliance_shares_a_listener_through_a_named_volume(
    shared_volume: str, runner_factory, tmp_path: Path
) -> None:
    """The appliance (image defaults: uid 10001) and a runner share a named volume.

    The setup docs/containers.md suggests where host sockets cannot be mounted (Docker
    Desktop): the agent's socket directory is a named volume, the runner mounts it too
    and uses a listener made for its uid (mode + peers: the agent cannot chown).
    """
    from testcontainers.core.container import DockerContainer

    config_dir = tmp_path / "appliance-config"
    config_dir.mkdir()
    config_dir.chmod(0o755)
    (config_dir / "listeners.yaml").write_text(
        "listeners:\n"
        "  - socket: /run/secretivex/runner.sock\n"
        '    mode: "0666"\n'
        '    keys: ["comment:ci-*"]\n'
        f"    peers: {{uids: [{RUNNER_UID}]}}\n"
    )
    (config_dir / "listeners.yaml").chmod(0o644)
    appliance = DockerContainer(
        SOFTHSM_IMAGE, command="--config /etc/secretivex/extra/listeners.yaml"
    )
    appliance.with_volume_mapping(shared_volume, "/run/secretivex", "rw")
    appliance.with_volume_mapping(str(config_dir), "/etc/secretivex/extra", "ro")
    appliance.with_env("SECRETIVEX_GENERATE_KEYS", "ed25519=ci-deploy ed25519=admin")
    appliance.with_kwargs(network="none")
    try:
        appliance.start()
        deadline = time.monotonic() + 60
        while container_exec(appliance, "ssh-add -l").returncode != 0:
            assert time.monotonic() < deadline, b"".join(appliance.get_logs()).decode()
            time.sleep(0.2)

        runner = runner_factory({shared_volume: "/run/secretivex"})
        listed = container_exec(
            runner, "ssh-add -l", env={"SSH_AUTH_SOCK": "/run/secretivex/runner.sock"}
        )
        assert listed.returncode == 0, listed.stderr
        assert [line.split()[2] for line in listed.stdout.splitlines()] == ["ci-deploy"]
        main = container_exec(
            runner, "ssh-add -l", env={"SSH_AUTH_SOCK": "/run/secretivex/agent.sock"}
        )
        assert main.returncode == 2
        assert "Permission denied" in main.stderr
    finally:
        appliance.stop()
