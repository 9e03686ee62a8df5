"""Helpers for the stall and hostile-upstream tests (issue 11, items 2 and 3).

Everything here talks raw bytes over real Unix sockets, independent of the agent's own
codec, so that a test can send what a hostile peer would send (oversized moduli,
crafted keys) and measure what other clients see meanwhile.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# -- SSH wire primitives -------------------------------------------------------------

SSH_AGENT_FAILURE = 5
SSH_AGENT_SUCCESS = 6
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14
SSH_AGENTC_ADD_IDENTITY = 17
SSH_AGENTC_EXTENSION = 27


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def string(value: bytes) -> bytes:
    return u32(len(value)) + value


def mpint(value: int) -> bytes:
    if value == 0:
        return u32(0)
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return string(raw)


def read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, pos)
    return buf[pos + 4 : pos + 4 + n], pos + 4 + n


# -- crafted RSA keys (what a hostile peer sends) ------------------------------------


@dataclass(frozen=True)
class RsaParts:
    n: int
    e: int
    d: int
    iqmp: int
    p: int
    q: int

    @property
    def public_blob(self) -> bytes:
        return string(b"ssh-rsa") + mpint(self.e) + mpint(self.n)


def crafted_rsa(bits: int, e: int = 65537) -> RsaParts:
    """An RSA key of exactly ``bits`` bits whose parts pass every cheap consistency check
    (n = p*q, e*d = 1 mod p-1 and q-1, iqmp*q = 1 mod p) but whose p and q are random
    odd numbers, not primes. Built in milliseconds; a real 16384-bit key takes minutes."""
    half = bits // 2
    while True:
        p, q = (secrets.randbits(half) | (3 << (half - 2)) | 1 for _ in range(2))
        if p == q or math.gcd(e, p - 1) != 1 or math.gcd(e, q - 1) != 1:
            continue
        n = p * q
        if n.bit_length() != bits:
            continue
        lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
        try:
            d = pow(e, -1, lam)
            iqmp = pow(q, -1, p)
        except ValueError:
            continue
        return RsaParts(n, e, d, iqmp, p, q)


def add_identity_payload(key: RsaParts, comment: str) -> bytes:
    """SSH_AGENTC_ADD_IDENTITY for an ssh-rsa key (PROTOCOL.agent field order)."""
    return (
        bytes([SSH_AGENTC_ADD_IDENTITY])
        + string(b"ssh-rsa")
        + b"".join(mpint(v) for v in (key.n, key.e, key.d, key.iqmp, key.p, key.q))
        + string(comment.encode())
    )


def write_openssh_private_key(key: RsaParts, path: Path, comment: str) -> None:
    """Write ``key`` unencrypted in OpenSSH's private key format (what ssh-add reads)."""
    check = secrets.randbits(32)
    private = (
        u32(check)
        + u32(check)
        + string(b"ssh-rsa")
        + b"".join(mpint(v) for v in (key.n, key.e, key.d, key.iqmp, key.p, key.q))
        + string(comment.encode())
    )
    pad = 1
    while len(private) % 8:
        private += bytes([pad])
        pad += 1
    body = (
        b"openssh-key-v1\0"
        + string(b"none")
        + string(b"none")
        + string(b"")
        + u32(1)
        + string(key.public_blob)
        + string(private)
    )
    import base64

    b64 = base64.b64encode(body).decode()
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
    text += "\n-----END OPENSSH PRIVATE KEY-----\n"
    path.write_text(text)
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_text(
        "ssh-rsa " + base64.b64encode(key.public_blob).decode() + f" {comment}\n"
    )


# -- a raw agent connection -------------------------------------------------------


class RawAgent:
    """One blocking connection to an agent socket, speaking raw frames."""

    def __init__(self, path: Path | str, timeout: float = 120.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("agent closed the connection")
            buf += chunk
        return buf

    def request(self, payload: bytes) -> bytes:
        self.sock.sendall(u32(len(payload)) + payload)
        (length,) = struct.unpack(">I", self._recv_exact(4))
        return self._recv_exact(length)

    def list_blobs(self) -> list[bytes]:
        reply = self.request(bytes([SSH_AGENTC_REQUEST_IDENTITIES]))
        assert reply[0] == SSH_AGENT_IDENTITIES_ANSWER, reply[:1]
        (count,) = struct.unpack_from(">I", reply, 1)
        pos, blobs = 5, []
        for _ in range(count):
            blob, pos = read_string(reply, pos)
            _, pos = read_string(reply, pos)
            blobs.append(blob)
        return blobs

    def sign(self, blob: bytes, data: bytes, flags: int = 0) -> bytes | None:
        reply = self.request(
            bytes([SSH_AGENTC_SIGN_REQUEST]) + string(blob) + string(data) + u32(flags)
        )
        if reply[0] != SSH_AGENT_SIGN_RESPONSE:
            return None
        return read_string(reply, 1)[0]


# -- a lister measuring what other clients see ----------------------------------------


@dataclass
class ListLatencies:
    """(start, duration) of every list answered by a background lister."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    error: BaseException | None = None

    def during(self, start: float, end: float) -> list[float]:
        """Durations of lists that started and finished inside [start, end]."""
        return [d for s, d in self.samples if s >= start and s + d <= end]

    def overlapping(self, start: float, end: float) -> list[float]:
        return [d for s, d in self.samples if s < end and s + d > start]

    @property
    def worst(self) -> float:
        return max(d for _, d in self.samples)

    @property
    def median(self) -> float:
        return statistics.median(d for _, d in self.samples)

    def stall_bound(self, floor: float = 0.1) -> float:
        """What 'no stall' means on a noisy machine: 100 ms, or 5x the typical list."""
        return max(floor, 5 * self.median)


@contextlib.contextmanager
def background_lister(path: Path | str, pause: float = 0.002) -> Iterator[ListLatencies]:
    """List in a tight loop on one connection until the block ends."""
    result = ListLatencies()
    stop = threading.Event()

    def loop() -> None:
        try:
            with RawAgent(path, timeout=300) as agent:
                while not stop.is_set():
                    t0 = time.monotonic()
                    agent.list_blobs()
                    result.samples.append((t0, time.monotonic() - t0))
                    time.sleep(pause)
        except BaseException as exc:  # reported by the test
            result.error = exc

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        # Warm up: a few lists before the attack gives the median its baseline.
        deadline = time.monotonic() + 10
        while len(result.samples) < 20 and time.monotonic() < deadline and result.error is None:
            time.sleep(0.01)
        yield result
    finally:
        stop.set()
        thread.join(timeout=300)
    if result.error is not None:
        raise result.error


# -- a hostile upstream agent ----------------------------------------------------------

#: Modes of ``HostileUpstream``: "good" relays to a real agent; the others misbehave.
UPSTREAM_MODES = ("good", "never", "trickle", "garbage", "slow")

_GARBAGE = (
    b"\xff\xff\xff\xff",  # a frame longer than any agent message
    u32(9) + bytes([SSH_AGENT_IDENTITIES_ANSWER]) + u32(0xFFFFFFFF) + b"\x00" * 4,  # 4e9 keys
    u32(5) + b"\x63\x00\x01\x02\x03",  # an unknown message type
    u32(0),  # an empty frame
)


class _HostileServer:
    """The server side of ``HostileUpstream``; runs in its own process (see ``main``)."""

    def __init__(self, path: Path, real_agent: Path, mode_file: Path, delay_s: float) -> None:
        self.path = path
        self.real_agent = real_agent
        self.mode_file = mode_file
        self.delay_s = delay_s
        self._stop = threading.Event()
        self._garbage = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)

    @property
    def mode(self) -> str:
        try:
            return self.mode_file.read_text().strip() or "good"
        except OSError:
            return "good"

    def serve_forever(self) -> None:
        while True:
            conn, _ = self._server.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_frame(self, conn: socket.socket) -> bytes | None:
        buf = b""
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            buf += chunk
        return buf[4:]

    def _relay(self, payload: bytes) -> bytes:
        with RawAgent(self.real_agent, timeout=30) as real:
            answer = real.request(payload)
        return u32(len(answer)) + answer

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    payload = self._read_frame(conn)
                    if payload is None:
                        return
                    mode = self.mode
                    if mode == "good":
                        conn.sendall(self._relay(payload))
                    elif mode == "slow":
                        time.sleep(self.delay_s)
                        conn.sendall(self._relay(payload))
                    elif mode == "never":
                        while conn.recv(65536):  # read on, answer nothing, until hung up
                            pass
                        return
                    elif mode == "trickle":
                        for byte in self._relay(payload):
                            time.sleep(1.0)
                            conn.sendall(bytes([byte]))
                    elif mode == "garbage":
                        self._garbage += 1
                        conn.sendall(_GARBAGE[self._garbage % len(_GARBAGE)])
                except (OSError, ConnectionError):
                    return


class HostileUpstream:
    """A real Unix-socket agent server, in its own process, in front of a real
    ``ssh-agent``. Set ``mode`` at any time; it applies to the next request:
    good (relay), never (accept, read, never answer), trickle (the real answer, one byte
    per second), garbage (malformed frames), slow (the real answer after ``delay_s``).
    """

    def __init__(self, path: Path, real_agent: Path, delay_s: float = 1.0) -> None:
        self.path = path
        self._mode_file = path.with_name(path.name + ".mode")
        self.mode = "good"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "hostile-upstream",
                str(path),
                str(real_agent),
                str(self._mode_file),
                str(delay_s),
            ]
        )
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def mode(self) -> str:
        return self._mode_file.read_text()

    @mode.setter
    def mode(self, value: str) -> None:
        assert value in UPSTREAM_MODES, value
        tmp = self._mode_file.with_suffix(".tmp")
        tmp.write_text(value)
        tmp.replace(self._mode_file)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> HostileUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- load from another process -------------------------------------------------------


def _hammer(path: str, blob_hex: str, clients: int) -> None:
    """``clients`` connections signing with one key in a loop, until killed."""
    blob = bytes.fromhex(blob_hex)

    def one() -> None:
        while True:
            try:
                with RawAgent(path, timeout=60) as conn:
                    while True:
                        if conn.sign(blob, b"hammer") is None:
                            time.sleep(0.01)
            except OSError:
                time.sleep(0.05)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextlib.contextmanager
def hammering(path: Path, blob: bytes, clients: int) -> Iterator[None]:
    """Sign requests for ``blob`` from ``clients`` connections of another process."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "hammer", str(path), blob.hex(), str(clients)]
    )
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _burst(path: str, payload_hex: str, conns: int, per_conn: int) -> None:
    """Send one payload ``per_conn`` times on each of ``conns`` connections at once;
    print the first byte of every reply (one hex pair each)."""
    payload = bytes.fromhex(payload_hex)
    replies: list[int] = []

    def one() -> None:
        with RawAgent(path, timeout=120) as conn:
            for _ in range(per_conn):
                replies.append(conn.request(payload)[0])

    threads = [threading.Thread(target=one) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(bytes(replies).hex())


def burst(path: Path, payload: bytes, conns: int, per_conn: int) -> list[int]:
    """Run ``_burst`` in another process (so its threads do not compete with the
    test's measuring thread for this interpreter's GIL); return the reply types."""
    out = subprocess.run(
        [sys.executable, __file__, "burst", str(path), payload.hex(), str(conns), str(per_conn)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return list(bytes.fromhex(out.strip()))


def main(argv: list[str]) -> None:
    if argv[0] == "hostile-upstream":
        path, real, mode_file, delay = argv[1:5]
        _HostileServer(Path(path), Path(real), Path(mode_file), float(delay)).serve_forever()
    elif argv[0] == "hammer":
        _hammer(argv[1], argv[2], int(argv[3]))
    elif argv[0] == "burst":
        _burst(argv[1], argv[2], int(argv[3]), int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
