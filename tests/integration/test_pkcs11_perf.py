"""Signing throughput on one SoftHSM key: ``Pkcs11Store.sign`` vs a plain python-pkcs11
loop in the same process (and OpenSSH's ``ssh-agent`` holding the token via
``ssh-add -s``, for the curves its PKCS#11 code supports).

A benchmark, not a timed test: the only assertion is that every path signs. Read the
numbers with ``pytest -m slow -s tests/integration/test_pkcs11_perf.py`` or
``python tests/integration/test_pkcs11_perf.py [seconds]``. Compare ratios from one
run, never absolute rates (CI machines have two cores).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

try:
    from tests.integration.softhsm import SoftHsm, Token, require_softhsm
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from softhsm import SoftHsm, Token, require_softhsm  # type: ignore[no-redef]

from secretivex.stores.pkcs11 import Pkcs11Store

pytestmark = [pytest.mark.softhsm, pytest.mark.slow]

CONCURRENCY = 16


def raw_loop_rate(
    module: str, token: Token, key_id: bytes, mechanism: Any, data: bytes, seconds: float
) -> float:
    """Signs/s of the simplest python-pkcs11 program: one session, one key, a loop."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    lib = pkcs11.lib(os.path.realpath(module))  # the store's path: same lib object
    # The store is logged in already, and PKCS#11 login is per process.
    session = lib.get_token(token_label=token.label).open()
    try:
        key = next(
            session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        )
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(50):
                key.sign(data, mechanism=mechanism)
            count += 50
        return count / elapsed
    finally:
        session.close()


async def store_rate(store: Pkcs11Store, blob: bytes, data: bytes, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def signer() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await store.sign(blob, data, 0)
            count += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(signer)
    return count / (time.perf_counter() - start)


# --------------------------------------------------------------------------- OpenSSH's agent


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _request(sock: socket.socket, body: bytes) -> bytes:
    sock.sendall(struct.pack(">I", len(body)) + body)
    header = b""
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    (length,) = struct.unpack(">I", header)
    reply = b""
    while len(reply) < length:
        reply += sock.recv(length - len(reply))
    return reply


async def agent_rate(sock_path: Path, blob: bytes, data: bytes, seconds: float) -> float:
    """Signs/s of 16 connections, each sending sign requests back to back."""
    request = bytes([13]) + _s(blob) + _s(data) + struct.pack(">I", 0)
    count = 0
    deadline = time.perf_counter() + seconds

    def client() -> None:
        nonlocal count
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(sock_path))
            while time.perf_counter() < deadline:
                reply = _request(sock, request)
                assert reply[0] == 14, reply[:1]
                count += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(anyio.to_thread.run_sync, client)
    return count / (time.perf_counter() - start)


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{path} never listened")


@contextlib.contextmanager
def secretivex_agent(hsm: SoftHsm, token: Token) -> Iterator[Path]:
    """``secretivex agent`` with a pkcs11 store on the token; yields its socket."""
    tmp = Path(tempfile.mkdtemp(prefix="secretivex-bench-"))
    sock_path = tmp / "agent.sock"
    cfg = tmp / "config.yaml"
    cfg.write_text(
        "stores:\n  - type: pkcs11\n    name: hsm\n"
        f"    module: {hsm.module}\n    token_label: {token.label}\n"
        "    pin_env: BENCH_PIN\n"
    )
    env = {**hsm.env, "BENCH_PIN": token.pin, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp)}
    env.pop("SECRETIVEX_CONFIG", None)
    argv = [sys.executable, "-m", "secretivex", "agent", "--config", str(cfg)]
    agent = subprocess.Popen(
        [*argv, "--socket", str(sock_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_socket(sock_path, agent)
        yield sock_path
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def openssh_agent(hsm: SoftHsm, token: Token) -> Iterator[Path | None]:
    """``ssh-agent`` after ``ssh-add -s MODULE``; yields its socket (None: no OpenSSH)."""
    if not (shutil.which("ssh-agent") and shutil.which("ssh-add")):
        # None is not a skip, so the skip guard cannot see it: fail here instead.
        if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
            pytest.fail("SECRETIVEX_REQUIRE_ALL=1 but ssh-agent/ssh-add are missing: "
                        "the comparison with OpenSSH's ssh-agent cannot run")  # fmt: skip
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="secretivex-bench-"))
    sock_path = tmp / "agent.sock"
    askpass = tmp / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{token.pin}'\n")
    askpass.chmod(0o700)
    module = os.path.realpath(hsm.module)
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock_path), "-P", module],
        env=hsm.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_socket(sock_path, agent)
        env = {
            **hsm.env,
            "SSH_AUTH_SOCK": str(sock_path),
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
        }
        subprocess.run(
            ["ssh-add", "-s", module],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        yield sock_path
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the run


async def run_benchmark(seconds: float = 3.0, rounds: int = 6) -> dict[str, float | None]:
    """Median rates over ``rounds`` interleaved slices of ``seconds / rounds`` each.

    Interleaving raw loop, store and agents slice by slice, and taking the median of
    the per-round ratios, keeps a busy machine's drifting background load out of the
    ratios as far as possible.
    """
    from pkcs11 import Mechanism

    hsm = SoftHsm.shared()
    token = hsm.init_token()
    token.generate("EC:edwards25519", key_id="01", label="ed")
    token.generate("EC:prime256v1", key_id="02", label="p256")
    data = os.urandom(128)  # about what an SSH user-auth request signs
    piece = seconds / rounds
    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    store = Pkcs11Store("bench", hsm.module, token_label=token.label, pin=lambda: token.pin)
    await store.open()
    try:
        ids = {i.comment: i for i in await store.identities()}
        blobs = {"ed25519": ids["ed"].blob, "p256": ids["p256"].blob}
        with secretivex_agent(hsm, token) as ours, openssh_agent(hsm, token) as theirs:
            for label, key_id, mechanism, payload in (
                ("ed25519", b"\x01", Mechanism.EDDSA, data),
                ("p256", b"\x02", Mechanism.ECDSA, data[:32]),  # the store signs SHA-256(data)
            ):
                blob = blobs[label]
                await store_rate(store, blob, data, 0.3)  # warm up
                await agent_rate(ours, blob, data, 0.3)
                for _ in range(rounds):
                    raw = raw_loop_rate(hsm.module, token, key_id, mechanism, payload, piece)
                    in_process = await store_rate(store, blob, data, piece)
                    agent = await agent_rate(ours, blob, data, piece)
                    add(f"{label}_raw_python_pkcs11", raw)
                    add(f"{label}_store_16_tasks", in_process)
                    add(f"{label}_store_ratio", in_process / raw)
                    add(f"{label}_secretivex_agent_16_conns", agent)
                    add(f"{label}_agent_ratio", agent / raw)
                    if theirs is not None and label == "p256":
                        openssh = await agent_rate(theirs, blob, data, piece)
                        add(f"{label}_openssh_agent_16_conns", openssh)
                        add(f"{label}_agent_vs_openssh", agent / openssh)
    finally:
        await store.aclose()
    return {name: statistics.median(values) for name, values in samples.items()}


def _report(results: dict[str, float | None]) -> str:
    lines = []
    for name, value in results.items():
        if value is None:
            shown = "n/a"
        elif "ratio" in name or "_vs_" in name:
            shown = f"{value:.3f}"
        else:
            shown = f"{value:,.0f} signs/s"
        lines.append(f"{name:36} {shown}")
    return "\n".join(lines)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pkcs11_throughput(anyio_backend: str) -> None:
    require_softhsm()
    results = await run_benchmark(float(os.environ.get("SECRETIVEX_BENCH_SECONDS", "3")))
    print("\n" + _report(results))
    assert all(value is None or value > 0 for value in results.values())


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 6.0
    print(_report(anyio.run(run_benchmark, seconds)))
