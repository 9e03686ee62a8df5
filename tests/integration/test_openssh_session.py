"""A user's session with the real OpenSSH tools against `secretivex agent`."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    fingerprint_of,
    keygen,
    require_tool,
    run,
    running_agent,
    start_agent,
)

pytestmark = pytest.mark.openssh


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen", "ssh")


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    keygen(d, "id_ed25519", "ed25519", comment="alice@laptop")
    keygen(d, "id_ecdsa", "ecdsa", 256, comment="ecdsa-256")
    keygen(d, "id_ecdsa384", "ecdsa", 384, comment="ecdsa-384")
    keygen(d, "id_rsa", "rsa", 3072, comment="rsa-3072")
    return d


def _listed(agent: AgentProcess) -> list[str]:
    out = agent.ssh_add("-l").stdout
    return [line.split()[1] for line in out.splitlines()]


def test_paramiko_agent_lists_and_signs(tmp_path: Path, keydir: Path) -> None:
    paramiko = pytest.importorskip("paramiko")
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    with running_agent(tmp_path, "--key", str(keydir / "id_ed25519")) as agent:
        os.environ["SSH_AUTH_SOCK"] = str(agent.socket)
        try:
            keys = paramiko.Agent().get_keys()
            assert len(keys) == 1
            sig = keys[0].sign_ssh_data(b"paramiko data")
        finally:
            os.environ.pop("SSH_AUTH_SOCK", None)
    blob = sig.asbytes() if hasattr(sig, "asbytes") else bytes(sig)
    n = struct.unpack(">I", blob[:4])[0]
    assert blob[4 : 4 + n] == b"ssh-ed25519"
    raw = blob[8 + n :]
    pub = load_ssh_public_key((keydir / "id_ed25519.pub").read_bytes())
    pub.verify(raw, b"paramiko data")  # type: ignore[union-attr]


def test_asyncssh_agent_lists_and_signs(tmp_path: Path, keydir: Path) -> None:
    asyncssh = pytest.importorskip("asyncssh")
    import anyio
    from asyncssh.public_key import decode_ssh_public_key

    with running_agent(tmp_path, "--key", str(keydir)) as agent:

        async def session() -> tuple[int, bool]:
            async with asyncssh.connect_agent(str(agent.socket)) as client:
                keys = await client.get_keys()
                ok = True
                for key in keys:
                    sig = await key.sign_async(b"asyncssh data")
                    pub = decode_ssh_public_key(key.public_data)
                    ok = ok and pub.verify(b"asyncssh data", sig)
                return len(keys), ok

        count, ok = anyio.run(session)
    assert count == 4
    assert ok


def _raw_request(sock_path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock_path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_bad_input_gets_failure_or_close_and_agent_keeps_serving(
    tmp_path: Path, keydir: Path
) -> None:
    with running_agent(tmp_path, "--key", str(keydir / "id_ed25519")) as agent:
        failure = b"\x00\x00\x00\x01\x05"
        assert _raw_request(agent.socket, b"\x00\x00\x00\x01\xfe") == failure  # unknown type
        assert _raw_request(agent.socket, b"\x00\x00\x00\x03\x0d\x00\x01") == failure  # truncated
        # Oversized frame: closed without buffering 256 KiB.
        assert _raw_request(agent.socket, struct.pack(">I", 1 << 30) + b"\x0b") == b""
        assert _raw_request(agent.socket, b"\x00\x00\x00\x00") == b""
        # Everyone else is still served.
        assert _listed(agent) == [fingerprint_of(keydir / "id_ed25519.pub")]
        assert agent.proc.poll() is None


def test_socket_permissions_stale_socket_and_clean_exit(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    stale = run_dir / "agent.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on, as a crashed agent leaves behind
    agent = start_agent(tmp_path)
    try:
        mode = stat.S_IMODE(agent.socket.stat().st_mode)
        assert mode == 0o600
        assert stat.S_IMODE(agent.socket.parent.stat().st_mode) == 0o700
        # A second agent on the same socket refuses to steal it.
        (tmp_path / "second").mkdir()
        second = start_agent(tmp_path / "second", socket_path=agent.socket, wait=False)
        assert second.proc.wait(15) == 1
        assert "already listening" in second.log()
    finally:
        code = agent.stop()
    assert code == 0
    assert not agent.socket.exists()


def test_print_env_and_zero_config_default_socket(tmp_path: Path) -> None:
    import subprocess

    from harness import SECRETIVEX

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    keygen(home / ".ssh", "id_ed25519", "ed25519", comment="home-key")
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    env.pop("SECRETIVEX_CONFIG", None)
    proc = subprocess.Popen(
        [SECRETIVEX, "agent", "--print-env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        expected = tmp_path / "xdg" / "secretivex" / "agent.sock"
        assert line == f"SSH_AUTH_SOCK={expected}; export SSH_AUTH_SOCK;\n"
        listing = run(["ssh-add", "-l"], env=dict(env, SSH_AUTH_SOCK=str(expected))).stdout
        assert "home-key" in listing
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_make_run_serves_the_users_ssh_keys(tmp_path: Path) -> None:
    """The README's `make run`, as a new user would type it."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    if not (repo / "Makefile").exists() or not (repo / ".venv" / ".installed").exists():
        reason = "needs the repository checkout with `make` already installed (.venv)"
        if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    keygen(home / ".ssh", "id_ecdsa", "ecdsa", 256, comment="make-run-key")
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(runtime))
    for var in ("SECRETIVEX_CONFIG", "MAKEFLAGS", "MAKELEVEL", "MFLAGS"):
        env.pop(var, None)
    proc = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("SSH_AUTH_SOCK=")
        sock = line.split("=", 1)[1].split(";", 1)[0]
        listing = run(["ssh-add", "-l"], env=dict(env, SSH_AUTH_SOCK=sock)).stdout
        assert fingerprint_of(home / ".ssh" / "id_ecdsa.pub") in listing
        assert "make-run-key" in listing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
