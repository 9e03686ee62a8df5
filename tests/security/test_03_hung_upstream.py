"""Item 3: a hung or slow upstream never stalls other stores.

A real secretivex agent serves a file key and an ``upstream`` store. The upstream is a
hostile agent (tests/security/sec_b_helpers.py ``HostileUpstream``: a Unix-socket server
in front of a real ``ssh-agent``) that switches to never answering, trickling one byte a
second, sending garbage or answering slowly — or a real OpenSSH ``ssh-agent`` stopped
with SIGSTOP. Meanwhile file-key signs (verified) and lists must keep completing fast,
the upstream's last good keys stay listed and show as stale in ``client health``, and
the upstream coming back is picked up.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from harness import (
    SECRETIVEX,
    AgentProcess,
    OpenSshAgent,
    keygen,
    openssh_agent,
    require_tool,
    run,
    running_agent,
)
from sec_b_helpers import (
    SSH_AGENT_SUCCESS,
    HostileUpstream,
    RawAgent,
    add_identity_payload,
    background_lister,
    crafted_rsa,
    hammering,
    read_string,
)

TIMEOUT_MS = 1500


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen", "ssh-agent")


@pytest.fixture()
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    d.mkdir()
    keygen(d, "file_key", "ed25519", comment="file-key")
    keygen(d, "up_a", "ed25519", comment="upstream-a")
    keygen(d, "up_b", "ed25519", comment="upstream-b")
    return d


@pytest.fixture()
def real_upstream(tmp_path: Path, keys: Path) -> Iterator[OpenSshAgent]:
    with openssh_agent(tmp_path / "real-upstream") as ossh:
        for name in ("up_a", "up_b"):
            run(["ssh-add", "-q", str(keys / name)], env=ossh.env)
        yield ossh


def _blob(pub: Path) -> bytes:
    import base64

    return base64.b64decode(pub.read_text().split()[1])


def _config(tmp_path: Path, keys: Path, upstream: Path, extra: str = "") -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "stores:\n"
        f"  - type: file\n    paths: [{keys / 'file_key'}]\n"
        f"  - type: upstream\n    name: up\n    socket: {upstream}\n"
        f"    timeout_ms: {TIMEOUT_MS}\n{extra}"
    )
    return config


def _upstream_health(agent: AgentProcess) -> dict[str, object]:
    out = run(
        [SECRETIVEX, "client", "health", "--json", "--socket", str(agent.socket)],
        env=agent.env,
    ).stdout
    stores = json.loads(out)["agent"]["stores"]
    (up,) = [s for s in stores if s["name"] == "up"]
    return dict(up)


def _wait_for(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class _FileSigner:
    """Signs with the file key in a loop; verifies every signature; records latencies."""

    def __init__(self, agent: AgentProcess, pub: Path) -> None:
        self.agent, self.blob = agent, _blob(pub)
        raw = self.blob[-32:]
        self.public = Ed25519PublicKey.from_public_bytes(raw)
        self.latencies: list[float] = []

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        with RawAgent(self.agent.socket, timeout=60) as conn:
            i = 0
            while time.monotonic() < end:
                data = f"file sign {i}".encode()
                t0 = time.monotonic()
                signature = conn.sign(self.blob, data)
                self.latencies.append(time.monotonic() - t0)
                assert signature is not None, "file-key sign failed"
                alg, pos = read_string(signature, 0)
                sig, _ = read_string(signature, pos)
                assert alg == b"ssh-ed25519"
                self.public.verify(sig, data)  # raises if the signature is wrong
                i += 1
                time.sleep(0.005)


@pytest.mark.parametrize("mode", ["never", "trickle", "garbage", "slow"])
def test_03_file_signs_never_wait_on_hostile_upstream(
    tmp_path: Path,
    keys: Path,
    real_upstream: OpenSshAgent,
    mode: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream_blob = _blob(keys / "up_a.pub")
    with HostileUpstream(
        tmp_path / "hostile.sock", real_upstream.socket, delay_s=TIMEOUT_MS / 2000
    ) as hostile:
        config = _config(tmp_path, keys, hostile.path)
        with running_agent(tmp_path, "--config", str(config)) as agent:
            listed = run(["ssh-add", "-l"], env=agent.env).stdout
            assert all(c in listed for c in ("file-key", "upstream-a", "upstream-b")), listed
            hostile.mode = mode
            signer = _FileSigner(agent, keys / "file_key.pub")
            with (
                background_lister(agent.socket) as lat,
                hammering(agent.socket, upstream_blob, 6),
            ):
                start = time.monotonic()
                signer.run_for(3 * TIMEOUT_MS / 1000)
                end = time.monotonic()
            # What other clients saw while the upstream misbehaved:
            sign_median = sorted(signer.latencies)[len(signer.latencies) // 2]
            sign_bound = max(0.1, 5 * sign_median)
            assert len(signer.latencies) > 20
            assert max(signer.latencies) <= sign_bound, (
                f"a file-key sign took {max(signer.latencies) * 1000:.0f} ms while the upstream "
                f"was in mode {mode!r} (median {sign_median * 1000:.2f} ms)"
            )
            worst_list = max(lat.overlapping(start, end))
            assert worst_list <= lat.stall_bound(), f"a list took {worst_list * 1000:.0f} ms"
            # The upstream's last good keys are still served...
            listed = run(["ssh-add", "-l"], env=agent.env).stdout
            assert "upstream-a" in listed and "upstream-b" in listed, listed
            health = _upstream_health(agent)
            if mode != "slow":
                # ...marked stale in health, with their age.
                assert health["state"] == "degraded", health
                detail = health["detail"]
                assert isinstance(detail, dict)
                assert detail["stale"] is True, health
                assert detail["listing_age_ms"] >= TIMEOUT_MS, health
                assert health["keys"] == 2
            else:
                assert health["state"] == "ok", health
            # The upstream comes back: picked up without a restart.
            hostile.mode = "good"

            def healthy() -> bool:
                h = _upstream_health(agent)
                return h["state"] == "ok" and h["detail"]["stale"] is False  # type: ignore[index]

            _wait_for("the upstream to be healthy again", healthy)
            with RawAgent(agent.socket, timeout=30) as conn:
                assert conn.sign(upstream_blob, b"after recovery") is not None
            assert agent.proc.poll() is None, agent.log()
    with capsys.disabled():
        print(
            f"\n[item 3] upstream {mode}: {len(signer.latencies)} file signs, worst "
            f"{max(signer.latencies) * 1000:.1f} ms (median {sign_median * 1000:.2f} ms); "
            f"worst list {worst_list * 1000:.1f} ms"
        )


def test_03_stale_listing_expires_and_recovers(
    tmp_path: Path, keys: Path, real_upstream: OpenSshAgent
) -> None:
    with HostileUpstream(tmp_path / "hostile.sock", real_upstream.socket) as hostile:
        config = _config(tmp_path, keys, hostile.path, "    stale_expiry_ms: 4000\n")
        with running_agent(tmp_path, "--config", str(config)) as agent:
            assert "upstream-a" in run(["ssh-add", "-l"], env=agent.env).stdout
            hostile.mode = "never"
            _wait_for(
                "the stale copy",
                lambda: _upstream_health(agent)["detail"]["stale"] is True,  # type: ignore[index]
            )
            assert "upstream-a" in run(["ssh-add", "-l"], env=agent.env).stdout
            _wait_for("the stale copy to expire", lambda: _upstream_health(agent)["keys"] == 0)
            listed = run(["ssh-add", "-l"], env=agent.env).stdout
            assert "upstream-a" not in listed and "file-key" in listed
            hostile.mode = "good"
            _wait_for("the keys to come back", lambda: _upstream_health(agent)["keys"] == 2)
            assert "upstream-b" in run(["ssh-add", "-l"], env=agent.env).stdout


def test_03_sigstopped_openssh_upstream(
    tmp_path: Path, keys: Path, real_upstream: OpenSshAgent
) -> None:
    """A real ssh-agent stopped with SIGSTOP: file signs fast, its keys stay (stale)."""
    config = _config(tmp_path, keys, real_upstream.socket)
    upstream_blob = _blob(keys / "up_b.pub")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        real_upstream.proc.send_signal(signal.SIGSTOP)
        try:
            signer = _FileSigner(agent, keys / "file_key.pub")
            with hammering(agent.socket, upstream_blob, 4):
                signer.run_for(2.5 * TIMEOUT_MS / 1000)
            median = sorted(signer.latencies)[len(signer.latencies) // 2]
            assert max(signer.latencies) <= max(0.1, 5 * median), max(signer.latencies)
            t0 = time.monotonic()
            with RawAgent(agent.socket, timeout=30) as conn:
                assert conn.sign(upstream_blob, b"to a stopped agent") is None
            # One timeout, not a retry after it (2 x timeout) and not forever.
            assert time.monotonic() - t0 < 1.8 * TIMEOUT_MS / 1000
            health = _upstream_health(agent)
            assert health["state"] == "degraded" and health["detail"]["stale"] is True  # type: ignore[index]
            assert "upstream-b" in run(["ssh-add", "-l"], env=agent.env).stdout
        finally:
            real_upstream.proc.send_signal(signal.SIGCONT)
        _wait_for("recovery", lambda: _upstream_health(agent)["state"] == "ok")
        with RawAgent(agent.socket, timeout=30) as conn:
            assert conn.sign(upstream_blob, b"after SIGCONT") is not None


def test_03_hung_upstream_does_not_hold_global_signer_slots(
    tmp_path: Path, keys: Path, real_upstream: OpenSshAgent
) -> None:
    """Upstream signs stuck on a hung agent must not starve other slow signs (tokens,
    big RSA keys) of agent.max_signers slots."""
    with HostileUpstream(tmp_path / "hostile.sock", real_upstream.socket) as hostile:
        config = _config(tmp_path, keys, hostile.path)
        text = config.read_text()
        config.write_text("agent:\n  max_signers: 2\n" + text)
        with running_agent(tmp_path, "--config", str(config)) as agent:
            big = crafted_rsa(8192)  # signed in a worker thread, under max_signers
            with RawAgent(agent.socket, timeout=60) as conn:
                assert conn.request(add_identity_payload(big, "big"))[0] == SSH_AGENT_SUCCESS
                t0 = time.monotonic()
                assert conn.sign(big.public_blob, b"baseline", 4) is not None
                baseline = time.monotonic() - t0
            hostile.mode = "never"
            with hammering(agent.socket, _blob(keys / "up_a.pub"), 8):
                time.sleep(0.5)  # the upstream signs are now stuck
                with RawAgent(agent.socket, timeout=60) as conn:
                    t0 = time.monotonic()
                    assert conn.sign(big.public_blob, b"during", 4) is not None
                    during = time.monotonic() - t0
            assert during < 2 * baseline + 0.5, (
                f"big-key sign took {during:.2f} s with a hung upstream (alone {baseline:.2f} s)"
            )


@pytest.mark.parametrize("mode", ["never", "trickle", "garbage"])
def test_03_client_cli_bounded_against_hostile_agent(
    tmp_path: Path, real_upstream: OpenSshAgent, mode: str
) -> None:
    """``secretivex client list`` talking to a hostile agent: one line, exit 1, within
    its timeout (a trickling agent used to reset a per-read timeout with every byte)."""
    with HostileUpstream(tmp_path / "hostile.sock", real_upstream.socket) as hostile:
        hostile.mode = mode
        t0 = time.monotonic()
        proc = run(
            [SECRETIVEX, "client", "list", "--socket", str(hostile.path), "--timeout-ms", "1500"],
            check=False,
            timeout=60,
        )
        elapsed = time.monotonic() - t0
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert elapsed < 1.5 + 3.0, f"client list took {elapsed:.1f} s against a {mode} agent"
