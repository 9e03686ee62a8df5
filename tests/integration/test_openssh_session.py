"""A user's session with the real OpenSSH tools against `secretivex agent`."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import time
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
    start_sshd,
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


def test_ssh_add_lists_file_keys_with_ssh_keygen_fingerprints(tmp_path: Path, keydir: Path) -> None:
    with running_agent(tmp_path, "--key", str(keydir)) as agent:
        expected = sorted(fingerprint_of(p) for p in keydir.glob("*.pub"))
        assert sorted(_listed(agent)) == expected
        long_listing = agent.ssh_add("-L").stdout.splitlines()
        pubs = {" ".join(p.read_text().split()[:2]) for p in keydir.glob("*.pub")}
        assert {" ".join(line.split()[:2]) for line in long_listing} == pubs
        assert any(line.endswith("alice@laptop") for line in long_listing)


@pytest.mark.parametrize("name", ["id_ed25519", "id_ecdsa", "id_ecdsa384", "id_rsa"])
def test_ssh_keygen_sign_through_agent_then_verify(tmp_path: Path, keydir: Path, name: str) -> None:
    data = tmp_path / "message.txt"
    data.write_text("sign me\n")
    pub = keydir / f"{name}.pub"
    # Only the public key is given to ssh-keygen: the private half stays in the agent.
    only_pub = tmp_path / f"{name}.pub"
    only_pub.write_text(pub.read_text())
    with running_agent(tmp_path, "--key", str(keydir)) as agent:
        run(
            ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(only_pub), str(data)],
            env=agent.env,
        )
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"alice@example.com {' '.join(pub.read_text().split()[:2])}\n")
    with open(data, "rb") as fh:
        proc = run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(allowed),
                "-I",
                "alice@example.com",
                "-n",
                "file",
                "-s",
                f"{data}.sig",
            ],
            input=fh.read(),
        )
    assert "Good" in proc.stdout + proc.stderr


def test_ssh_add_add_remove_and_remove_all(tmp_path: Path, keydir: Path) -> None:
    extra = keygen(tmp_path, "added", "ed25519", comment="added-by-ssh-add")
    with running_agent(tmp_path, "--key", str(keydir / "id_ed25519")) as agent:
        agent.ssh_add(str(extra))
        assert fingerprint_of(extra.with_suffix(".pub")) in _listed(agent)
        agent.ssh_add("-d", str(extra))
        assert fingerprint_of(extra.with_suffix(".pub")) not in _listed(agent)
        # A configured store's key cannot be removed over the protocol.
        refused = agent.ssh_add("-d", str(keydir / "id_ed25519"), check=False)
        assert refused.returncode != 0
        agent.ssh_add(str(extra))
        agent.ssh_add("-D")
        assert _listed(agent) == [fingerprint_of(keydir / "id_ed25519.pub")]


def test_ssh_add_lifetime_expires(tmp_path: Path) -> None:
    key = keygen(tmp_path, "short", "ed25519")
    with running_agent(tmp_path) as agent:
        agent.ssh_add("-t", "1", str(key))
        assert fingerprint_of(key.with_suffix(".pub")) in _listed(agent)
        time.sleep(2.2)
        out = agent.ssh_add("-l", check=False)
        assert "no identities" in out.stdout + out.stderr


def _askpass(tmp_path: Path, answer: str, exit_code: int = 0) -> dict[str, str]:
    script = tmp_path / f"askpass-{exit_code}-{len(answer)}.sh"
    script.write_text(f"#!/bin/sh\necho '{answer}'\nexit {exit_code}\n")
    script.chmod(0o755)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def test_lock_and_unlock(tmp_path: Path, keydir: Path) -> None:
    with running_agent(tmp_path, "--key", str(keydir / "id_ed25519")) as agent:
        agent.ssh_add("-x", extra_env=_askpass(tmp_path, "hunter2"))
        locked = agent.ssh_add("-l", check=False)
        assert "no identities" in locked.stdout + locked.stderr
        data = tmp_path / "d"
        data.write_text("x")
        only_pub = tmp_path / "only.pub"  # no private key beside it to fall back on
        only_pub.write_text((keydir / "id_ed25519.pub").read_text())
        signing = run(
            ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(only_pub), str(data)],
            env=agent.env,
            check=False,
        )
        assert signing.returncode != 0
        wrong = agent.ssh_add("-X", check=False, extra_env=_askpass(tmp_path, "wrong"))
        assert wrong.returncode != 0
        agent.ssh_add("-X", extra_env=_askpass(tmp_path, "hunter2"))
        assert _listed(agent) == [fingerprint_of(keydir / "id_ed25519.pub")]


def test_confirm_constraint_asks_askpass(tmp_path: Path) -> None:
    key = keygen(tmp_path, "confirmed", "ed25519")
    data = tmp_path / "d"
    data.write_text("x")
    sign = ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(key.with_suffix(".pub")), str(data)]
    deny_env = _askpass(tmp_path, "no", exit_code=1)
    with running_agent(tmp_path, env=deny_env) as agent:
        agent.ssh_add("-c", str(key))
        assert run(sign, env=agent.env, check=False).returncode != 0
    allow_env = _askpass(tmp_path, "yes", exit_code=0)
    (tmp_path / "d.sig").unlink(missing_ok=True)
    with running_agent(tmp_path, env=allow_env) as agent:
        agent.ssh_add("-c", str(key))
        run(sign, env=agent.env)


def test_certificate_is_listed_and_logs_in_with_trusted_user_ca(tmp_path: Path) -> None:
    """The agent's certificate is what logs in: sshd trusts only the CA, and the user's
    plain key is in no authorized_keys file."""
    require_tool("/usr/sbin/sshd")
    ca = keygen(tmp_path, "ca", "ed25519")
    user = keygen(tmp_path, "user", "ed25519", comment="certified")
    login = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            str(ca),
            "-I",
            "user-id",
            "-n",
            login,
            "-V",
            "+1h",
            str(user.with_suffix(".pub")),
        ]
    )
    cert = Path(f"{user}-cert.pub")
    assert cert.exists()
    sshd = start_sshd(tmp_path, [], extra_config=f"TrustedUserCAKeys {ca.with_suffix('.pub')}\n")
    try:
        with running_agent(tmp_path, "--key", str(user)) as agent:
            listing = agent.ssh_add("-L").stdout
            assert "ssh-ed25519-cert-v01@openssh.com" in listing
            assert cert.read_text().split()[1] in listing
            proc = run([*sshd.ssh_argv(), "echo", "cert-login-ok"], env=agent.env)
            assert "cert-login-ok" in proc.stdout
        log = sshd.log_path.read_text()
        assert 'Accepted certificate ID "user-id"' in log, log[-2000:]
        # The same agent without the certificate (plain key only) is refused.
        plain = tmp_path / "plain"
        plain.mkdir()
        for suffix in ("", ".pub"):
            (plain / f"user{suffix}").write_bytes(Path(f"{user}{suffix}").read_bytes())
        (plain / "user").chmod(0o600)
        with running_agent(tmp_path / "plain", "--key", str(plain / "user")) as agent:
            refused = run([*sshd.ssh_argv(), "true"], env=agent.env, check=False)
            assert refused.returncode == 255, refused.stderr
            assert "Permission denied" in refused.stderr
    finally:
        sshd.proc.terminate()
        sshd.proc.wait(10)


def test_encrypted_key_with_passphrase_env(tmp_path: Path) -> None:
    key = keygen(tmp_path, "locked_key", "ed25519", passphrase="correct horse")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n    passphrase_env: TEST_KEY_PASSPHRASE\n"
    )
    with running_agent(
        tmp_path, "--config", str(config), env={"TEST_KEY_PASSPHRASE": "correct horse"}
    ) as agent:
        assert _listed(agent) == [fingerprint_of(key.with_suffix(".pub"))]
        assert "correct horse" not in agent.log()


def test_ssh_logs_into_sshd_with_only_the_agent(tmp_path: Path, keydir: Path) -> None:
    require_tool("/usr/sbin/sshd")
    sshd = start_sshd(
        tmp_path,
        [
            (keydir / "id_ed25519.pub").read_text().strip(),
            (keydir / "id_rsa.pub").read_text().strip(),
        ],
    )
    try:
        with running_agent(tmp_path, "--key", str(keydir / "id_ed25519")) as agent:
            proc = run([*sshd.ssh_argv(), "echo", "logged-in-as-$(id -un)"], env=agent.env)
            assert "logged-in-as-" in proc.stdout
        # RSA with each SHA-2 signature algorithm (flags 2 and 4) through the agent.
        with running_agent(tmp_path, "--key", str(keydir / "id_rsa")) as agent:
            for alg in ("rsa-sha2-256", "rsa-sha2-512"):
                proc = run(
                    [*sshd.ssh_argv("-o", f"PubkeyAcceptedAlgorithms={alg}"), "true"], env=agent.env
                )
                assert proc.returncode == 0
    finally:
        sshd.proc.terminate()
        sshd.proc.wait(10)


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
