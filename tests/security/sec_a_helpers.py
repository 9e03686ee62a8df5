"""Helpers for the sec-a security tests (items 1, 7, 8, 10 of issue 11): run a real
`secretivex agent` (or a control process) as an unprivileged uid, attack it from
another process of the same uid, and read what the attacker could get."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import require_tool, wait_for_socket

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def as_uid(uid: int, argv: Sequence[str]) -> list[str]:
    return ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", *argv]


def need_root_and_setpriv() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the agent and the attacker as another uid (setpriv)")
    require_tool("setpriv")


def python_for(uid: int) -> tuple[str, dict[str, str]]:
    """An interpreter ``uid`` may execute that imports this checkout and its deps.

    The venv's interpreter often lives under /root (0700); the distribution's python of
    the same version runs the same site-packages (same ABI).
    """
    site = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{site}", "PYTHONNOUSERSITE": "1"}
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/python{version}"]
    for exe in candidates:
        if not os.path.exists(exe):
            continue
        probe = subprocess.run(
            as_uid(uid, [exe, "-c", "import secretivex.cli.main, cryptography, orjson"]),
            env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True,
            timeout=60,
        )
        if probe.returncode == 0:
            return exe, env
    pytest.skip(
        f"no python {version} executable by uid {uid} can import this checkout "
        f"(tried {', '.join(candidates)})"
    )


@contextlib.contextmanager
def uid_dir(uid: int) -> Iterator[Path]:
    """A fresh directory owned by ``uid`` (0700) under a traversable /tmp parent."""
    parent = Path(tempfile.mkdtemp(prefix="secretivex-sec-a-", dir="/tmp"))
    parent.chmod(0o755)
    home = parent / "home"
    home.mkdir(mode=0o700)
    os.chown(home, uid, uid)
    try:
        yield home
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def give(path: Path, uid: int, mode: int = 0o600) -> Path:
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


@dataclass
class UidAgent:
    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_agent_as(
    uid: int,
    home: Path,
    args: Sequence[str],
    env: dict[str, str] | None = None,
    prefix: Sequence[str] = (),
    cwd: Path | None = None,
) -> UidAgent:
    """``secretivex agent`` as ``uid`` with HOME=home and its socket in home/run."""
    exe, py_env = python_for(uid)
    run_dir = home / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(run_dir, uid, uid)
    sock = run_dir / "agent.sock"
    log_path = home / "agent.log"
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PYTHONUNBUFFERED": "1",
        "SECRETIVEX_UVLOOP": os.environ.get("SECRETIVEX_UVLOOP", "1"),
        **py_env,
        **(env or {}),
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *prefix,
                *as_uid(uid, [exe, "-m", "secretivex", "agent", "--socket", str(sock), *args]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd or home,
            start_new_session=True,
        )
    agent = UidAgent(proc, sock, log_path)
    try:
        wait_for_socket(sock, timeout=30, proc=proc)
    except AssertionError:
        agent.stop()
        raise AssertionError(f"agent did not start:\n{agent.log()}") from None
    return agent


#: Run as the attacker (stdlib only): what can it read of process PID?
ATTACK = r"""
import errno, json, os, sys
pid, seed, secret = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3].encode()
out = {"uid": os.getuid()}

def err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))

try:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        out["environ"] = "secret-found" if secret in fh.read() else "read-no-secret"
except OSError as exc:
    out["environ"] = err(exc)
try:
    with open(f"/proc/{pid}/maps") as fh:
        maps = fh.read().splitlines()
    out["maps"] = "read"
except OSError as exc:
    maps = []
    out["maps"] = err(exc)
try:
    mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
except OSError as exc:
    out["mem"] = err(exc)
else:
    found = False
    scanned = 0
    with mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if hi - lo > 512 * 1024 * 1024:
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                continue
            scanned += len(data)
            if seed in data:
                found = True
                break
    out["mem"] = "seed-found" if found else f"seed-not-found ({scanned} bytes scanned)"
print(json.dumps(out))
"""


def attack(uid: int, pid: int, seed: bytes, secret: str) -> dict[str, str]:
    """Run the same-uid attacker against ``pid``; returns what it got per target."""
    exe, _ = python_for(uid)
    result = subprocess.run(
        as_uid(uid, [exe, "-c", ATTACK, str(pid), seed.hex(), secret]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, str] = json.loads(result.stdout)
    return report


#: A control: a plain Python process (no prctl) holding the seed and the secret in its
#: environment, like an agent without the hardening.
HOLDER = r"""
import os, sys, time
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
key = load_ssh_private_key(open(sys.argv[1], "rb").read(), os.environ["HOLDER_SECRET"].encode())
print("ready", flush=True)
time.sleep(600)
"""


def start_holder(uid: int, key_path: Path, secret: str) -> subprocess.Popen[str]:
    exe, py_env = python_for(uid)
    proc = subprocess.Popen(
        as_uid(uid, [exe, "-c", HOLDER, str(key_path)]),
        env={**py_env, "PATH": "/usr/bin:/bin", "HOLDER_SECRET": secret},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def proc_gone(pid: int) -> bool:
    """No such process, or only a zombie left (reaped by whoever inherited it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]
