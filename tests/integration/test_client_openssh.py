"""The client against OpenSSH's real ssh-agent: listing, signing (verified independently
with cryptography), key management, and the CLI on top."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from harness import fingerprint_of, keygen, require_tool, run, wait_for_socket

from secretivex.client import (
    AgentClient,
    AgentExtensionUnsupported,
    AgentFailure,
    SyncAgentClient,
)
from secretivex.keys.files import load_private_key_file

pytestmark = pytest.mark.openssh
SECRETIVEX = str(Path(sys.executable).with_name("secretivex"))
KEYS = {"id_ed25519": ("ed25519", None), "id_ecdsa": ("ecdsa", 256), "id_rsa": ("rsa", 3072)}


@dataclass
class OpenSSHAgent:
    socket: Path
    keydir: Path
    proc: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}

    def ssh_add(self, *args: str) -> str:
        return run(["ssh-add", *args], env=self.env).stdout


def start_openssh_agent(tmp: Path, keydir: Path) -> OpenSSHAgent:
    require_tool("ssh-agent", "ssh-add", "ssh-keygen")
    sock = tmp / "openssh.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for_socket(sock, proc=proc)  # type: ignore[arg-type]
    agent = OpenSSHAgent(sock, keydir, proc)
    agent.ssh_add(*(str(keydir / name) for name in KEYS))
    return agent


def stop(agent: OpenSSHAgent) -> None:
    agent.proc.send_signal(signal.SIGTERM)
    agent.proc.wait(10)


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("ssh-keygen")
    directory = tmp_path_factory.mktemp("keys")
    for name, (kind, bits) in KEYS.items():
        keygen(directory, name, kind, bits, comment=f"it-{name}")
    return directory


@pytest.fixture
def agent(tmp_path: Path, keydir: Path) -> Iterator[OpenSSHAgent]:
    running = start_openssh_agent(tmp_path, keydir)
    try:
        yield running
    finally:
        stop(running)


def verify_with_cryptography(pub_file: Path, data: bytes, blob: bytes) -> str:
    """Check an SSH signature blob against a .pub file without secretivex code."""
    public = serialization.load_ssh_public_key(pub_file.read_bytes())
    alg_len = int.from_bytes(blob[:4], "big")
    algorithm = blob[4 : 4 + alg_len].decode()
    rest = blob[4 + alg_len :]
    sig = rest[4 : 4 + int.from_bytes(rest[:4], "big")]
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(sig, data)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        r_len = int.from_bytes(sig[:4], "big")
        r = int.from_bytes(sig[4 : 4 + r_len], "big")
        s_part = sig[4 + r_len :]
        s = int.from_bytes(s_part[4 : 4 + int.from_bytes(s_part[:4], "big")], "big")
        public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public, rsa.RSAPublicKey):
        digest = {"rsa-sha2-256": hashes.SHA256(), "rsa-sha2-512": hashes.SHA512()}[algorithm]
        public.verify(sig, data, padding.PKCS1v15(), digest)
    else:  # pragma: no cover
        raise AssertionError(f"unexpected key {public!r}")
    return algorithm


def test_list_matches_ssh_keygen(agent: OpenSSHAgent, keydir: Path) -> None:
    with SyncAgentClient.connect(agent.socket) as client:
        listed = client.list_identities()
    assert sorted(i.fingerprint for i in listed) == sorted(
        fingerprint_of(keydir / f"{name}.pub") for name in KEYS
    )
    assert {i.comment for i in listed} == {f"it-{name}" for name in KEYS}


@pytest.mark.parametrize(
    ("name", "flags", "algorithm"),
    [
        ("id_ed25519", 0, "ssh-ed25519"),
        ("id_ecdsa", 0, "ecdsa-sha2-nistp256"),
        ("id_rsa", 2, "rsa-sha2-256"),
        ("id_rsa", 4, "rsa-sha2-512"),
    ],
)
def test_async_sign_verifies_with_cryptography(
    agent: OpenSSHAgent, keydir: Path, name: str, flags: int, algorithm: str
) -> None:
    data = os.urandom(200)

    async def main() -> bytes:
        async with AgentClient.connect(agent.socket, timeout=5, response_timeout=10) as client:
            identity = next(i for i in await client.list_identities() if i.comment == f"it-{name}")
            return await client.sign(identity.blob, data, flags)

    blob = anyio.run(main)
    assert verify_with_cryptography(keydir / f"{name}.pub", data, blob) == algorithm


def test_concurrent_requests_on_one_async_client(agent: OpenSSHAgent, keydir: Path) -> None:
    async def main() -> dict[int, bytes]:
        results: dict[int, bytes] = {}
        async with AgentClient.connect(agent.socket) as client:
            (identity,) = [i for i in await client.list_identities() if i.key_type == "ssh-ed25519"]

            async def one(n: int) -> None:
                results[n] = await client.sign(identity.blob, b"msg %d" % n)

            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(one, n)
        return results

    signatures = anyio.run(main)
    assert sorted(signatures) == list(range(20))
    for n, blob in signatures.items():
        verify_with_cryptography(keydir / "id_ed25519.pub", b"msg %d" % n, blob)


def test_key_management_round_trip(agent: OpenSSHAgent, keydir: Path) -> None:
    key = load_private_key_file(keydir / "id_ecdsa")
    with SyncAgentClient.connect(agent.socket) as client:
        client.remove_identity(key.public_blob)
        assert "it-id_ecdsa" not in agent.ssh_add("-l")
        client.add_identity(key, "re-added", lifetime=300)
        assert "re-added" in agent.ssh_add("-l")
        client.lock(b"secret")
        assert client.list_identities() == []
        with pytest.raises(AgentFailure):
            client.unlock(b"wrong")
        client.unlock(b"secret")
        assert len(client.list_identities()) == 3
        client.remove_all()
        assert client.list_identities() == []


def test_unknown_extension_is_unsupported(agent: OpenSSHAgent) -> None:
    with SyncAgentClient.connect(agent.socket) as client:
        with pytest.raises(AgentExtensionUnsupported):
            client.extension("nothing@example.com")
        assert client.health() is None
        assert len(client.list_identities()) == 3  # the connection is still fine


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SECRETIVEX, *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_sign_verifies_with_cryptography(
    agent: OpenSSHAgent, keydir: Path, tmp_path: Path
) -> None:
    """``client sign`` by comment and by fingerprint, each signature checked without
    secretivex code (tests/scenarios/client_cli_openssh_agent.txt has list, health,
    wait-ready, a locked and a dead agent)."""
    data = tmp_path / "payload"
    data.write_bytes(os.urandom(64))
    signed = cli("client", "sign", "--socket", str(agent.socket), "--comment", "it-id_rsa",
                 "--data", str(data), "--flags", "rsa-sha2-512")  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    blob = base64.b64decode(signed.stdout)
    assert verify_with_cryptography(keydir / "id_rsa.pub", data.read_bytes(), blob) == (
        "rsa-sha2-512"
    )
    fp = fingerprint_of(keydir / "id_ed25519.pub")
    out = tmp_path / "sig.bin"
    signed = cli("client", "sign", "--socket", str(agent.socket), "--key", fp,
                 "--data", str(data), "--out", str(out))  # fmt: skip
    assert signed.returncode == 0
    verify_with_cryptography(keydir / "id_ed25519.pub", data.read_bytes(), out.read_bytes())
