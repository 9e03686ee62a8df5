"""Helpers for the sec-c security tests: other uids through setpriv, a shared socket
directory, OpenSSH's own ssh-agent, and raw agent-protocol floods."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from harness import require_tool, run, wait_for_socket

from secretivex import protocol
from secretivex.protocol.framing import FrameDecoder, frame

NOBODY = 65534


@contextlib.contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory other uids can traverse (pytest's tmp dirs are 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="secretivex-sec-c-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_uid(
    argv: Sequence[str], env: dict[str, str], *, uid: int = NOBODY, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a real tool as another uid (and its own gid, no supplementary groups)."""
    require_tool("setpriv")
    full = [
        "setpriv",
        "--reuid",
        str(uid),
        "--regid",
        str(uid),
        "--clear-groups",
        *argv,
    ]
    return run(full, env=dict(env, HOME="/"), check=check)


def give_key(key: Path, directory: Path, uid: int = NOBODY) -> Path:
    """Copy a private key (and its .pub) where ``uid`` can read it, owned by it."""
    dest = directory / key.name
    shutil.copy(key, dest)
    shutil.copy(key.with_suffix(".pub"), dest.with_suffix(".pub"))
    for p in (dest, dest.with_suffix(".pub")):
        os.chown(p, uid, uid)
    dest.chmod(0o600)
    return dest


def fingerprints(env: dict[str, str], sock: Path, *, uid: int | None = None) -> set[str]:
    """Fingerprints ``ssh-add -l`` prints through ``sock`` (as ``uid`` when given)."""
    argv = ["ssh-add", "-l"]
    env = dict(env, SSH_AUTH_SOCK=str(sock))
    out = as_uid(argv, env, uid=uid) if uid is not None else run(argv, env=env, check=False)
    return {line.split()[1] for line in out.stdout.splitlines() if line.startswith(("256 ", "2"))}


def fp_of(pub: Path) -> str:
    return run(["ssh-keygen", "-lf", str(pub)]).stdout.split()[1]


@contextlib.contextmanager
def openssh_agent(directory: Path) -> Iterator[Path]:
    """OpenSSH's ssh-agent in the foreground on ``directory/openssh.sock``."""
    require_tool("ssh-agent")
    sock = directory / "openssh.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_socket(sock, proc=proc)  # type: ignore[arg-type]
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


class RawAgent:
    """One connection speaking the agent protocol with our codec (no client retries)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.decoder = FrameDecoder()
        self.pending: list[bytes] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, message: protocol.Request) -> None:
        self.sock.sendall(frame(protocol.encode_request(message)))

    def receive(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("agent closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def request(self, message: protocol.Request) -> bytes:
        self.send(message)
        return self.receive()


def ed25519_add(comment: str) -> protocol.AddIdentity:
    """An ADD_IDENTITY for a fresh Ed25519 key (cheap: ~50 us per key)."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes_raw()
    wire = protocol.WirePrivateKey("ssh-ed25519", (pub, key.private_bytes_raw() + pub))
    return protocol.AddIdentity(wire, comment)


def flood_adds(path: Path, count: int, comment_len: int, batch: int = 200) -> tuple[int, int]:
    """Send ``count`` adds (pipelined in batches); return (successes, failures)."""
    agent = RawAgent(path)
    ok = failed = 0
    try:
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            for i in range(n):
                agent.send(ed25519_add(f"flood-{sent + i:05d}-".ljust(comment_len, "x")))
            for _ in range(n):
                reply = agent.receive()
                if reply[:1] == bytes([protocol.SSH_AGENT_SUCCESS]):
                    ok += 1
                else:
                    failed += 1
            sent += n
    finally:
        agent.close()
    return ok, failed


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def lying_upstream(path: Path, identities: Sequence[tuple[bytes, bytes]]) -> Iterator[None]:
    """An agent at ``path`` that lists ``identities`` (blob, raw comment bytes) exactly
    as given and answers everything else with SSH_AGENT_FAILURE.

    Its threads end with the block: the listening socket is shut down (a blocked
    ``accept`` returns), open connections are shut down, and every thread is joined, so
    no thread outlives the test (a stray one would change how later tests fork).
    """
    import struct
    import threading

    def string(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    answer = bytes([protocol.SSH_AGENT_IDENTITIES_ANSWER]) + struct.pack(">I", len(identities))
    answer += b"".join(string(b) + string(c) for b, c in identities)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    conns: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        decoder = FrameDecoder()
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                for payload in decoder.feed(chunk):
                    listing = payload[:1] == bytes([protocol.SSH_AGENTC_REQUEST_IDENTITIES])
                    conn.sendall(frame(answer if listing else protocol.FAILURE_FRAME[4:]))

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)
        server.close()
        acceptor.join(10)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(10)
