"""Shared test helpers: real tools, a real agent process, a real sshd.

Tests read like a user's session: start the agent, run the real tool, assert what a
person would see.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE_ALL = os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1"
SECRETIVEX = str(Path(sys.executable).with_name("secretivex"))


def require_tool(*names: str) -> None:
    """Skip (or fail, under SECRETIVEX_REQUIRE_ALL=1) when a tool is not installed."""
    missing = [n for n in names if shutil.which(n) is None and not Path(n).exists()]
    if missing:
        msg = f"needs {', '.join(missing)} (install with: make system-deps)"
        if REQUIRE_ALL:
            pytest.fail(msg + " — SECRETIVEX_REQUIRE_ALL=1 forbids skipping")
        pytest.skip(msg)


def sshd_path() -> str:
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd") or ""):
        if candidate and Path(candidate).exists():
            return candidate
    return "sshd"


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: bytes | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input.decode() if input is not None else None,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def keygen(
    directory: Path,
    name: str,
    key_type: str = "ed25519",
    bits: int | None = None,
    comment: str | None = None,
    passphrase: str = "",
) -> Path:
    """A fresh key made by the real ssh-keygen; returns the private key path."""
    path = directory / name
    argv = [
        "ssh-keygen",
        "-q",
        "-t",
        key_type,
        "-N",
        passphrase,
        "-C",
        comment or name,
        "-f",
        str(path),
    ]
    if bits:
        argv[4:4] = ["-b", str(bits)]
    run(argv)
    return path


def fingerprint_of(pub: Path) -> str:
    return run(["ssh-keygen", "-lf", str(pub)]).stdout.split()[1]


def verify_ssh_signature(public_key: bytes | Path, data: bytes, signature: bytes) -> str:
    """Check an agent's SSH signature blob with ``cryptography``; return its algorithm.

    ``public_key``: the public key blob, or a ``.pub`` file. Independent of the
    package's own verifier: a wrong signature raises ``InvalidSignature``.
    """
    import base64
    import struct

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    if isinstance(public_key, Path):
        public_key = base64.b64decode(public_key.read_text().split()[1])
    key_type = public_key[4 : 4 + struct.unpack(">I", public_key[:4])[0]]
    key = load_ssh_public_key(key_type + b" " + base64.b64encode(public_key))

    def strings(blob: bytes) -> list[bytes]:
        out, pos = [], 0
        while pos < len(blob):
            (n,) = struct.unpack_from(">I", blob, pos)
            out.append(blob[pos + 4 : pos + 4 + n])
            pos += 4 + n
        assert pos == len(blob), "trailing bytes in signature"
        return out

    alg_raw, raw = strings(signature)
    alg = alg_raw.decode()
    if isinstance(key, ed25519.Ed25519PublicKey):
        assert alg == "ssh-ed25519", alg
        key.verify(raw, data)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        assert alg == key_type.decode(), alg
        r, s_ = (int.from_bytes(x, "big") for x in strings(raw))
        digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}
        key.verify(encode_dss_signature(r, s_), data, ec.ECDSA(digest[key.curve.key_size]))
    elif isinstance(key, rsa.RSAPublicKey):
        rsa_digest = {"rsa-sha2-256": hashes.SHA256(), "rsa-sha2-512": hashes.SHA512()}
        key.verify(raw, data, padding.PKCS1v15(), rsa_digest.get(alg, hashes.SHA1()))
    else:
        raise AssertionError(f"unexpected key type {key_type!r}")
    return alg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Whether ``predicate()`` turned true within ``timeout`` seconds (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def wait_for_socket(
    path: Path, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"agent exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not start listening within {timeout}s")


@dataclass
class OpenSshAgent:
    """A running ``ssh-agent -D`` (OpenSSH's, the reference peer)."""

    socket: Path
    proc: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, SSH_AUTH_SOCK=str(self.socket))
        env.pop("SSH_AGENT_PID", None)
        return env


@contextlib.contextmanager
def openssh_agent(directory: Path, env: dict[str, str] | None = None) -> Iterator[OpenSshAgent]:
    """A real ``ssh-agent -D`` on a socket in ``directory`` (``env``: its environment),
    stopped afterwards (also when a test left it stopped with SIGSTOP)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    sock = directory / "ssh-agent.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                break
            time.sleep(0.02)
        yield OpenSshAgent(sock, proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class AgentProcess:
    """A `secretivex agent` subprocess with an isolated HOME."""

    socket: Path
    home: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["HOME"] = str(self.home)
        env["SSH_AUTH_SOCK"] = str(self.socket)
        env.pop("SSH_AGENT_PID", None)
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def ssh_add(
        self,
        *args: str,
        check: bool = True,
        input: bytes | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = self.env
        if extra_env:
            env.update(extra_env)
        return run(["ssh-add", *args], env=env, check=check, input=input)


def start_agent(
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    socket_path: Path | None = None,
    wait: bool = True,
    prefix: tuple[str, ...] = (),
) -> AgentProcess:
    """Start ``secretivex agent`` (``prefix``: a wrapper such as ``prlimit ... --``)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True, mode=0o700)
    sock = socket_path or tmp / "run" / "agent.sock"
    log_path = tmp / f"agent-{time.monotonic_ns()}.log"
    full_env = dict(os.environ)
    full_env.update(
        {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PYTHONUNBUFFERED": "1"}
    )
    full_env.pop("SECRETIVEX_CONFIG", None)
    full_env.pop("XDG_RUNTIME_DIR", None)
    if env:
        full_env.update(env)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefix, SECRETIVEX, "agent", "--socket", str(sock), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
    agent = AgentProcess(sock, home, proc, log_path, extra_env=env or {})
    if wait:
        try:
            wait_for_socket(sock, proc=proc)
        except AssertionError:
            agent.stop()
            raise AssertionError(f"agent did not start:\n{agent.log()}") from None
    return agent


@contextlib.contextmanager
def running_agent(tmp: Path, *args: str, **kwargs: object) -> Iterator[AgentProcess]:
    agent = start_agent(tmp, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield agent
    finally:
        agent.stop()


@dataclass
class Sshd:
    port: int
    user: str
    host_key_pub: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def ssh_argv(self, *extra: str, known_hosts: Path | None = None) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=no",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "ConnectTimeout=10",
            *extra,
            f"{self.user}@127.0.0.1",
        ]


def start_sshd(
    tmp: Path, authorized_keys: Sequence[str], *, name: str = "sshd", extra_config: str = ""
) -> Sshd:
    """A real sshd on 127.0.0.1 (random port) accepting exactly these public keys.

    ``extra_config``: more sshd_config lines (e.g. ``TrustedUserCAKeys``)."""
    base = tmp / name
    base.mkdir(mode=0o700)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_ed25519")])
    auth = base / "authorized_keys"
    auth.write_text("\n".join(authorized_keys) + "\n")
    auth.chmod(0o600)
    port = free_port()
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_ed25519'}\n"
        f"AuthorizedKeysFile {auth}\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"PidFile {base / 'sshd.pid'}\nLogLevel VERBOSE\nAllowAgentForwarding yes\n"
        "Subsystem sftp internal-sftp\n" + extra_config
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    log_path = base / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sshd_path(), "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited: {log_path.read_text()}")
        time.sleep(0.05)
    host_pub = base / "host_ed25519.pub"
    known = base / "known_hosts"
    known.write_text(
        f"[127.0.0.1]:{port} {host_pub.read_text().split(' ', 2)[0]} "
        f"{host_pub.read_text().split()[1]}\n"
    )
    return Sshd(port, user, host_pub, known, proc, log_path)
