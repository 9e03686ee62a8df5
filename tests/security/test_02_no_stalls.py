"""Item 2: no request stalls other clients.

A hostile (or just unlucky) client adds a 16384-bit RSA key, signs with it, or sends
bursts of session-bind requests with an expensive host key; meanwhile another client
lists keys in a tight loop against the same real agent and records every latency.
Where OpenSSH defines the behaviour (modulus size caps) the same request goes to a real
``ssh-agent`` in the same test.
"""

from __future__ import annotations

import math
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from harness import keygen, openssh_agent, require_tool, run, running_agent
from sec_b_helpers import (
    SSH_AGENT_FAILURE,
    SSH_AGENT_SUCCESS,
    SSH_AGENTC_EXTENSION,
    ListLatencies,
    RawAgent,
    RsaParts,
    add_identity_payload,
    background_lister,
    burst,
    crafted_rsa,
    string,
    write_openssh_private_key,
)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen", "ssh-agent")


def _timed_ssh_add(
    env: dict[str, str], key: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    proc = run(["ssh-add", str(key)], env=env, check=False, timeout=240)
    return proc, time.monotonic() - t0


def _assert_no_stall(lat: ListLatencies, start: float, end: float, what: str) -> None:
    bound = lat.stall_bound()
    overlapping = lat.overlapping(start, end)
    assert overlapping, f"no list overlapped {what}"
    assert max(overlapping) <= bound, (
        f"a concurrent list took {max(overlapping) * 1000:.0f} ms during {what} "
        f"(bound {bound * 1000:.0f} ms, median {lat.median * 1000:.2f} ms)"
    )


def test_02_huge_rsa_add_does_not_stall_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ssh-add of a 16384-bit RSA key: lists keep answering during the add and the sign."""
    key = crafted_rsa(16384)
    key_path = tmp_path / "huge_rsa"
    write_openssh_private_key(key, key_path, "huge-16384")
    with running_agent(tmp_path) as agent:
        with background_lister(agent.socket) as lat:
            proc, add_s = _timed_ssh_add(agent.env, key_path)
            add_end = time.monotonic()
            assert proc.returncode == 0, proc.stderr
            add_start = add_end - add_s
            time.sleep(0.05)
            # Signing with it takes seconds (non-prime factors defeat CRT): off the loop.
            with RawAgent(agent.socket) as signer:
                sign_start = time.monotonic()
                signature = signer.sign(key.public_blob, b"data", 4)
                sign_end = time.monotonic()
            time.sleep(0.05)
        assert signature is not None
        listed = run(["ssh-add", "-l"], env=agent.env).stdout
        assert "16384" in listed and "huge-16384" in listed
        in_add = lat.during(add_start, add_end)
        _assert_no_stall(lat, add_start, add_end, f"the add ({add_s:.2f} s)")
        _assert_no_stall(lat, sign_start, sign_end, f"the sign ({sign_end - sign_start:.2f} s)")
        assert in_add, "no list completed while the add ran"

    with openssh_agent(tmp_path / "openssh") as ossh:
        oproc, openssh_add_s = _timed_ssh_add(ossh.env, key_path)
        assert oproc.returncode == 0, oproc.stderr
    worst_add = max(lat.overlapping(add_start, add_end))
    with capsys.disabled():
        print(
            f"\n[item 2] 16384-bit RSA ssh-add: secretivex {add_s * 1000:.0f} ms, "
            f"OpenSSH ssh-agent {openssh_add_s * 1000:.0f} ms; lists during add: "
            f"{len(in_add)}, worst concurrent list {worst_add * 1000:.1f} ms "
            f"(median {lat.median * 1000:.2f} ms); sign {sign_end - sign_start:.2f} s, worst list "
            f"during sign {max(lat.overlapping(sign_start, sign_end)) * 1000:.1f} ms"
        )


@pytest.mark.parametrize("bits", [512, 17000])
def test_02_rsa_modulus_outside_openssh_bounds_is_refused(tmp_path: Path, bits: int) -> None:
    """RSA moduli outside 1024..16384 bits: FAILURE from both agents, nothing listed."""
    payload = add_identity_payload(crafted_rsa(bits), f"rsa-{bits}")
    with running_agent(tmp_path) as agent, openssh_agent(tmp_path / "openssh") as ossh:
        for name, path in (("secretivex", agent.socket), ("ssh-agent", ossh.socket)):
            with RawAgent(path, timeout=30) as conn:
                reply = conn.request(payload)
                assert reply[0] == SSH_AGENT_FAILURE, f"{name} accepted a {bits}-bit RSA key"
                assert conn.list_blobs() == [], name
        assert agent.proc.poll() is None


def test_02_inconsistent_rsa_key_is_refused(tmp_path: Path) -> None:
    """The cheap checks still catch parts that do not belong together."""
    good = crafted_rsa(2048)
    broken = [
        RsaParts(good.n, good.e, good.d + 2, good.iqmp, good.p, good.q),  # d
        RsaParts(good.n, good.e, good.d, good.iqmp + 1, good.p, good.q),  # iqmp
        RsaParts(good.n + 2, good.e, good.d, good.iqmp, good.p, good.q),  # n != p*q
    ]
    with running_agent(tmp_path) as agent, RawAgent(agent.socket, timeout=30) as conn:
        for key in broken:
            assert conn.request(add_identity_payload(key, "broken"))[0] == SSH_AGENT_FAILURE
        assert conn.request(add_identity_payload(good, "fine"))[0] == SSH_AGENT_SUCCESS
        assert conn.list_blobs() == [good.public_blob]


def test_02_real_rsa_3072_added_with_ssh_add_still_signs(tmp_path: Path) -> None:
    """The faster validation changes nothing for real keys: ssh-keygen -Y verifies."""
    keys = tmp_path / "keys"
    keys.mkdir()
    key = keygen(keys, "rsa3072", "rsa", 3072, comment="real-rsa")
    pub = key.with_name("rsa3072.pub")
    with running_agent(tmp_path) as agent:
        agent.ssh_add(str(key))
        key.unlink()  # the signature can only come from the agent
        message = tmp_path / "message.txt"
        message.write_text("signed through secretivex\n")
        run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(message)], env=agent.env)
        allowed = tmp_path / "allowed_signers"
        allowed.write_text("me@example " + pub.read_text())
        verified = run(
            [
                "ssh-keygen",
                "-Y",
                "verify",
                "-f",
                str(allowed),
                "-I",
                "me@example",
                "-n",
                "file",
                "-s",
                str(message) + ".sig",
            ],
            input=message.read_bytes(),
        )
        assert "Good" in verified.stdout


# -- session-bind bursts -------------------------------------------------------------


def _expensive_host_key() -> tuple[RsaParts, int]:
    """A real 3072-bit RSA host key with a ~3070-bit public exponent: each verification
    is a full-size exponentiation (~10 ms), the most a host key within OpenSSH's bounds
    can cost (OpenSSL caps e at 64 bits only above 3072-bit moduli)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    real = rsa.generate_private_key(65537, 3072).private_numbers()
    p, q = real.p, real.q
    n = p * q
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    while True:
        e = secrets.randbits(3070) | (1 << 3069) | 1
        if math.gcd(e, lam) == 1:
            break
    d = pow(e, -1, lam)
    return RsaParts(n, e, d, pow(q, -1, p), p, q), d


def _rsa_sha256_signature(key: RsaParts, d: int, data: bytes) -> bytes:
    import hashlib

    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    t = digest_info + hashlib.sha256(data).digest()
    k = (key.n.bit_length() + 7) // 8
    em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    sig = pow(int.from_bytes(em, "big"), d, key.n).to_bytes(k, "big")
    return string(b"rsa-sha2-256") + string(sig)


def _session_bind_payload(host: RsaParts, session_id: bytes, signature: bytes) -> bytes:
    return (
        bytes([SSH_AGENTC_EXTENSION])
        + string(b"session-bind@openssh.com")
        + string(host.public_blob)
        + string(session_id)
        + string(signature)
        + b"\x01"  # forwarding: every further bind is accepted, so each one verifies
    )


def test_02_session_bind_burst_keeps_lists_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host, d = _expensive_host_key()
    session_id = secrets.token_bytes(32)
    payload = _session_bind_payload(host, session_id, _rsa_sha256_signature(host, d, session_id))
    bad = _session_bind_payload(host, session_id, _rsa_sha256_signature(host, d, b"other"))
    conns, per_conn = 16, 12
    with running_agent(tmp_path) as agent:
        with RawAgent(agent.socket) as probe:  # the signature is valid, the forgery is not
            assert probe.request(payload)[0] == SSH_AGENT_SUCCESS
            assert probe.request(bad)[0] == SSH_AGENT_FAILURE
        with background_lister(agent.socket) as lat:
            start = time.monotonic()
            replies = burst(agent.socket, payload, conns, per_conn)
            end = time.monotonic()
        assert replies == [SSH_AGENT_SUCCESS] * (conns * per_conn)
        _assert_no_stall(lat, start, end, f"{conns * per_conn} session-binds")
        assert lat.during(start, end), "no list completed during the burst"
    with capsys.disabled():
        print(
            f"\n[item 2] {conns}x{per_conn} session-binds (RSA-3072, 3070-bit e) in "
            f"{end - start:.2f} s; worst concurrent list "
            f"{max(lat.overlapping(start, end)) * 1000:.1f} ms (median {lat.median * 1000:.2f} ms)"
        )
