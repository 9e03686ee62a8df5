"""Helpers for the sec-d security tests: other uids, shared directories, raw sockets,
RSS readings and agent configs. Everything here drives real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534
#: The system interpreter: other uids cannot traverse the worktree's venv.
SYSTEM_PYTHON = "/usr/bin/python3"
LIST_REQUEST = b"\x00\x00\x00\x01\x0b"  # SSH_AGENTC_REQUEST_IDENTITIES
MAX_FRAME = 256 * 1024


def as_uid(uid: int = NOBODY) -> list[str]:
    """argv prefix that runs a command as ``uid`` with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


@contextlib.contextmanager
def shared_dir(mode: int = 0o755) -> Iterator[Path]:
    """A directory under /tmp other uids can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="secretivex-secd-", dir="/tmp"))
    d.chmod(mode)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def config_file(tmp: Path, body: str, name: str = "agent.yaml") -> Path:
    path = tmp / name
    path.write_text(body)
    return path


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def settled_rss_kib(pid: int, timeout: float = 30.0, quiet_kib: int = 512) -> tuple[int, int]:
    """Poll VmRSS until three readings 0.3 s apart agree within ``quiet_kib``.
    Returns (settled value, highest value seen)."""
    readings = [vm_rss_kib(pid)]
    peak = readings[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        readings.append(vm_rss_kib(pid))
        peak = max(peak, readings[-1])
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= quiet_kib:
            break
    return readings[-1], peak


def raw_list(path: Path, timeout: float = 30.0) -> bytes:
    """One REQUEST_IDENTITIES on a fresh connection; returns the reply payload
    (b"" when the agent closed the connection instead of answering)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(LIST_REQUEST)
        return read_frame(s)


def read_frame(s: socket.socket) -> bytes:
    header = recv_exact(s, 4)
    if len(header) < 4:
        return b""
    (length,) = struct.unpack(">I", header)
    return recv_exact(s, length)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def metrics_snapshot(agent_proc: subprocess.Popen[bytes], path: Path) -> dict[str, object]:
    """Ask the agent for a snapshot (SIGUSR1) and read it once it is rewritten."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    agent_proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            if path.stat().st_mtime_ns != before:
                data: dict[str, object] = json.loads(path.read_text())
                return data
        time.sleep(0.05)
    raise AssertionError("metrics snapshot not written")


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


#: Runs as another uid (system python, stdlib only): opens N connections to a socket,
#: makes one list request on each (so the agent has decided about every one), prints
#: how many were served, then holds the served ones open until stdin closes.
HOLDER = r"""
import socket, struct, sys
path, n = sys.argv[1], int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)  # blocking: waits while the listen backlog is full
    except OSError:
        s.close()
        continue
    s.settimeout(60)
    socks.append(s)
served = []
for s in socks:
    try:
        s.sendall(b"\x00\x00\x00\x01\x0b")
        head = s.recv(4)
    except OSError:
        head = b""
    if len(head) == 4:
        length = struct.unpack(">I", head)[0]
        got = 0
        while got < length:
            chunk = s.recv(length - got)
            if not chunk:
                break
            got += len(chunk)
        served.append(s)
    else:
        s.close()
print(len(served), flush=True)
sys.stdin.read()
"""


def start_holder(sock: Path, count: int, uid: int = NOBODY) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*as_uid(uid), SYSTEM_PYTHON, "-I", "-c", HOLDER, str(sock), str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )


def holder_count(holder: subprocess.Popen[str], timeout: float = 120.0) -> int:
    assert holder.stdout is not None
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(holder.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError("connection holder did not report")
    line = holder.stdout.readline()
    if not line.strip():
        err = holder.stderr.read() if holder.stderr else ""
        raise AssertionError(f"connection holder failed: {err}")
    return int(line)


def stop_holder(holder: subprocess.Popen[str]) -> None:
    with contextlib.suppress(Exception):
        assert holder.stdin is not None
        holder.stdin.close()
    try:
        holder.wait(15)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait()


def wait_until(predicate: object, timeout: float = 15.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def owner_key(tmp: Path) -> Path:
    """The agent owner's Ed25519 key (comment ``owner-key``) under ``tmp/keys``."""
    from harness import keygen

    keys = tmp / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    return keygen(keys, "id_ed25519", comment="owner-key")
