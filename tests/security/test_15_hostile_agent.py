"""The other end of the socket is hostile: secretivex as an agent *client*.

``SSH_AUTH_SOCK`` may be a forwarded socket whose far end is someone else's root, and
``bench run`` or ``client`` may be pointed at any agent. Against a fake agent
(tests/security/hostile_agent.py) that lies, floods, escapes, drips or goes silent,
the client commands must print one clear line and exit 1 (never a traceback, never
past their timeout), never print the agent's text raw to a terminal, and ``client
sign`` must never output a signature it did not verify against the requested key.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import time
import tty
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import SECRETIVEX, run
from hostile_agent import (
    HostileAgent,
    framed,
    identities,
    new_key,
    parse_sign_request,
    sign_response,
    sstr,
    u32,
)

from secretivex.keys.software import SoftwareKey

KEY = new_key("good")
OTHER = new_key("other")
#: Terminal control an agent might smuggle into a comment or a type name: a window
#: title (OSC ... BEL), colour, clear screen, a carriage return that overwrites the line,
#: a fake extra line, a right-to-left override that reorders what follows.
NASTY = "\x1b]0;owned\x07\x1b[31m\x1b[2J\rfake\nSHA256:forged ssh-ed25519 x\u202egnp.exe\u2066"
RAW_CONTROL = [b"\x1b", b"\x07", b"\r", "\u202e".encode(), "\u2066".encode()]

Script = Callable[[socket.socket, bytes], object]


def _answers(
    listing: bytes, sign: Callable[[bytes], bytes] | None = None, ext: bytes | None = None
) -> Script:
    """Script: ``listing`` for REQUEST_IDENTITIES, ``sign(payload)`` for SIGN_REQUEST,
    ``ext`` for EXTENSION, FAILURE for the rest."""

    def script(conn: socket.socket, payload: bytes) -> object:
        if payload[0] == 11:
            conn.sendall(listing)
        elif payload[0] == 13 and sign is not None:
            conn.sendall(sign(payload))
        elif payload[0] == 27 and ext is not None:
            conn.sendall(ext)
        else:
            conn.sendall(framed(b"\x05"))
        return None

    return script


def _client(sock: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run([SECRETIVEX, "client", *args, "--socket", str(sock)], check=False, timeout=timeout)


def _one_clean_error_line(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    for raw in RAW_CONTROL:
        assert raw.decode() not in proc.stderr


def _on_a_terminal(args: list[str]) -> tuple[int, bytes]:
    """Run a command with stdout and stderr on a pty in raw mode (a real terminal as the
    program sees it: click strips some escapes only when output is not a tty)."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no \n -> \r\n: any \r seen came from the program
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the pty
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(60), out
    finally:
        os.close(master)


# -- what a terminal is shown ---------------------------------------------------------


def test_15_client_list_never_prints_agent_escapes_to_a_terminal(tmp_path: Path) -> None:
    """A comment and a key type full of terminal control are printed escaped, one line
    per key, as ``ssh-add -l`` does; the JSON form keeps the exact text."""
    evil_type = sstr("\x1b[2Jssh-evil\x07") + b"junk"
    listing = identities((KEY.public_blob, NASTY), (evil_type, "plain"))
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(listing)):
        code, out = _on_a_terminal([SECRETIVEX, "client", "list", "--socket", str(sock)])
        as_json = _client(sock, "list", "--json")
    assert code == 0, out
    for raw in RAW_CONTROL:
        assert raw not in out, (raw, out)
    lines = out.decode().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(KEY.fingerprint + " ssh-ed25519 \\x1b]0;owned\\x07"), lines
    assert "\\rfake\\nSHA256:forged" in lines[0] and "\\u202egnp.exe\\u2066" in lines[0]
    assert "\\x1b[2Jssh-evil\\x07 plain" in lines[1]
    import json

    listed = json.loads(as_json.stdout)
    assert listed[0]["comment"] == NASTY  # JSON escapes by construction; text kept exact


def test_15_error_lines_quoting_agent_text_are_escaped(tmp_path: Path) -> None:
    """``--comment`` matching several keys names them in the error: escaped, one line."""
    data = tmp_path / "data"
    data.write_bytes(b"x")
    listing = identities((KEY.public_blob, "a" + NASTY), (OTHER.public_blob, "b" + NASTY))
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(listing)):
        code, out = _on_a_terminal(
            [SECRETIVEX, "client", "sign", "--socket", str(sock), "--comment", "*",
             "--data", str(data)]
        )  # fmt: skip
    assert code == 1, out
    for raw in RAW_CONTROL:
        assert raw not in out, (raw, out)
    assert out.decode().count("\n") == 1 and "matches 2 keys" in out.decode()


HEALTH_HEAD = bytes((29,)) + sstr("health@secretivex")


@pytest.mark.parametrize(
    "document",
    [
        b'{"stores": "abc", "listeners": 5}',
        b'{"stores": [1, "x", null, {"name": "s", "detail": "not-a-dict"}]}',
        b'{"stores": [{"name": "s", "state": "ok", "detail": {"skipped": "one"}}], '
        b'"listeners": "sock"}',
        b'{"version": {"a": 1}, "locked": [1], "stores": {"name": "x"}}',
    ],
    ids=["scalars", "mixed-list", "wrong-types", "objects-everywhere"],
)
def test_15_client_health_survives_any_json_object(tmp_path: Path, document: bytes) -> None:
    """A health document of unexpected shapes is shown as far as it makes sense, never an
    internal error."""
    sock = tmp_path / "a.sock"
    script = _answers(identities((KEY.public_blob, "k")), ext=framed(HEALTH_HEAD + document))
    with HostileAgent(sock, script):
        for extra in ([], ["--json"]):
            proc = _client(sock, "health", *extra)
            assert proc.returncode == 0, (proc.stdout, proc.stderr)
            assert proc.stderr == "", proc.stderr


def test_15_client_health_escapes_every_agent_string(tmp_path: Path) -> None:
    import json

    text = NASTY
    document = {
        "version": text,
        "stores": [
            {
                "name": text,
                "kind": text,
                "state": text,
                "keys": text,
                "last_error": text,
                "detail": {text: text, "skipped": [text], "list": [text]},
            }
        ],
        "listeners": [{"socket": text}, text],
    }
    raw = json.dumps(document).encode()
    listing = identities((KEY.public_blob, text), (KEY.public_blob, text))  # a duplicate
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(listing, ext=framed(HEALTH_HEAD + raw))):
        code, out = _on_a_terminal([SECRETIVEX, "client", "health", "--socket", str(sock)])
    assert code == 0, out
    for control in RAW_CONTROL:
        assert control not in out, (control, out)
    assert b"\\x1b]0;owned" in out


def test_15_client_health_deeply_nested_json_is_one_line(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    nested = b"[" * 100_000 + b"]" * 100_000
    script = _answers(identities((KEY.public_blob, "k")), ext=framed(HEALTH_HEAD + nested))
    with HostileAgent(sock, script):
        proc = _client(sock, "health")
    _one_clean_error_line(proc)
    assert "nested too deeply" in proc.stderr


# -- client sign: only verified signatures --------------------------------------------

RSA_KEY = SoftwareKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa")


def _rsa_sha1(payload: bytes) -> bytes:
    """An honest RSA signature, but SHA-1 (ssh-rsa) whatever the flags asked for."""
    _, data, _ = parse_sign_request(payload)
    return sign_response(RSA_KEY.sign(data, 0))


@pytest.mark.parametrize(
    ("key", "answer", "flags", "reason"),
    [
        (KEY, lambda p: sign_response(OTHER.sign(parse_sign_request(p)[1])), None, "verify"),
        (KEY, lambda p: sign_response(KEY.sign(b"other data")), None, "verify"),
        (KEY, lambda p: sign_response(b"\x1b[31mjunk"), None, "verify"),
        (KEY, lambda p: sign_response(b""), None, "verify"),
        (KEY, lambda p: sign_response(sstr("\x1b]0;x\x07") + sstr(b"zz")), None, "verify"),
        (RSA_KEY, _rsa_sha1, "rsa-sha2-512", "ssh-rsa signature where rsa-sha2-512"),
    ],
    ids=["another-key", "other-data", "junk", "empty", "escape-alg", "sha1-downgrade"],
)
def test_15_client_sign_never_outputs_an_unverified_signature(
    tmp_path: Path,
    key: SoftwareKey,
    answer: Callable[[bytes], bytes],
    flags: str | None,
    reason: str,
) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"sign me")
    out_file = tmp_path / "sig"
    sock = tmp_path / "a.sock"
    extra = ["--flags", flags] if flags else []
    with HostileAgent(sock, _answers(identities((key.public_blob, "k")), answer)):
        to_stdout = _client(sock, "sign", "--key", key.fingerprint, "--data", str(data), *extra)
        to_file = _client(
            sock, "sign", "--key", key.fingerprint, "--data", str(data), "-o", str(out_file),
            *extra,
        )  # fmt: skip
    for proc in (to_stdout, to_file):
        _one_clean_error_line(proc)
        assert reason in proc.stderr, proc.stderr
        assert proc.stdout == ""
    assert not out_file.exists()


def test_15_client_sign_no_verify_is_explicit(tmp_path: Path) -> None:
    """``--no-verify`` (for key types the client cannot check) outputs what the agent
    said; the default checks, and an honest answer passes."""
    data = tmp_path / "data"
    data.write_bytes(b"sign me")
    sock = tmp_path / "a.sock"
    junk = sign_response(sstr("ssh-ed25519") + sstr(b"\x00" * 64))
    honest = _answers(
        identities((KEY.public_blob, "k")),
        lambda p: sign_response(KEY.sign(parse_sign_request(p)[1])),
    )
    with HostileAgent(sock, _answers(identities((KEY.public_blob, "k")), lambda p: junk)):
        proc = _client(sock, "sign", "--key", KEY.fingerprint, "--data", str(data), "--no-verify")
    assert proc.returncode == 0, proc.stderr
    sock.unlink()
    with HostileAgent(sock, honest):
        proc = _client(sock, "sign", "--key", KEY.fingerprint, "--data", str(data))
    assert proc.returncode == 0, proc.stderr


def test_15_client_sign_oversized_data_is_refused_before_connecting(tmp_path: Path) -> None:
    """Data no agent could take in one message is a usage error naming the limit, not
    "bad framing from the agent"."""
    data = tmp_path / "data"
    data.write_bytes(b"x" * (300 * 1024))
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(identities((KEY.public_blob, "k")))) as agent:
        proc = _client(sock, "sign", "--key", KEY.fingerprint, "--data", str(data))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "more than an agent accepts" in proc.stderr and "Traceback" not in proc.stderr
    assert agent.requests == []


def test_15_sync_client_oversized_request_is_the_callers_error(tmp_path: Path) -> None:
    from secretivex.client import AgentError, SyncAgentClient

    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(identities())), SyncAgentClient.connect(sock) as agent:
        with pytest.raises(ValueError, match="too large") as info:
            agent.sign(KEY.public_blob, b"x" * (300 * 1024))
        assert not isinstance(info.value, AgentError)
        assert agent.list_identities() == []  # the connection is still usable


# -- framing and silence (bounded, one line) ------------------------------------------


def _hang_after(data: bytes) -> Script:
    def script(conn: socket.socket, payload: bytes) -> object:
        conn.sendall(data)
        return "hang"

    return script


def _close_after(data: bytes) -> Script:
    def script(conn: socket.socket, payload: bytes) -> object:
        conn.sendall(data)
        return "close"

    return script


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (_hang_after(b"\xff\xff\xff\xff"), "declared frame length 4294967295"),
        (_hang_after(u32(300 * 1024) + b"\x0c" + b"a" * 65536), "declared frame length"),
        (_hang_after(b"\x00\x00\x00\x00"), "declared frame length 0"),
        (_hang_after(framed(b"\x0c" + u32(2**32 - 1) + b"abc")), "claims 4294967295 keys"),
        (_hang_after(framed(b"\x0c" + u32(1) + sstr(b"blob"))), "malformed answer"),
        (_hang_after(framed(b"\x63garbage")), "unknown response type 99"),
        (_hang_after(framed(b"\x0e")), "malformed answer"),
        (_close_after(u32(100) + b"\x0c\x00"), "closed the connection"),
        (_close_after(b""), "closed the connection"),
    ],
    ids=[
        "length-2^32-1", "over-256KiB", "length-0", "huge-count", "truncated-identity",
        "unknown-type", "sign-response-for-list", "close-mid-frame", "close-at-once",
    ],
)  # fmt: skip
def test_15_malformed_replies_are_one_line_exit_1(
    tmp_path: Path, script: Script, message: str
) -> None:
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, script):
        proc = _client(sock, "list", "--timeout-ms", "20000")
    _one_clean_error_line(proc)
    assert message in proc.stderr, proc.stderr


def test_15_agent_that_never_reads_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    """An agent that accepts and never reads: a 200 KiB sign request fills the socket
    buffer; the command still ends at its timeout with one line."""
    data = tmp_path / "data"
    data.write_bytes(os.urandom(200 * 1024))
    sock = tmp_path / "a.sock"
    listing = identities((KEY.public_blob, "k"))
    first = True

    def script(conn: socket.socket, payload: bytes) -> object:
        nonlocal first
        if first:
            first = False
            conn.sendall(listing)
            return "hang"  # stop reading: the sign request is never consumed
        return "hang"

    with HostileAgent(sock, script):
        proc = _client(
            sock, "sign", "--key", KEY.fingerprint, "--data", str(data), "--timeout-ms", "1500"
        )
    _one_clean_error_line(proc)
    assert "did not answer within 1.5 s" in proc.stderr


# -- bench against a hostile agent ----------------------------------------------------


@pytest.mark.parametrize(
    "reply", [b"\xff\xff\xff\xff" + b"x" * 65536, b"\x00\x00\x00\x00"], ids=["4GiB", "zero"]
)
def test_15_bench_counts_an_out_of_bounds_frame_as_a_protocol_error(
    tmp_path: Path, reply: bytes
) -> None:
    """The bench engine used to buffer toward any declared length (up to 4 GiB) until
    the response timeout; now the header alone is a counted protocol error."""
    from secretivex.bench.engine import Engine, EngineSpec
    from secretivex.protocol import RequestIdentities, encode_request, frame

    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _hang_after(reply)):
        spec = EngineSpec(
            socket_path=str(sock),
            frames=[frame(encode_request(RequestIdentities()))],
            expected_type=12,
            workers=1,
            total_workers=1,
            connect_timeout_ns=10_000_000_000,
            response_timeout_ns=120_000_000_000,
        )
        engine = Engine(spec)
        try:
            engine.connect_all()
            counts = engine.measured(time.monotonic_ns(), 1, None)
        finally:
            engine.close()
    assert counts.protocol_error == 1 and counts.request_timeouts == 0, counts.as_dict()


# -- the upstream store (secretivex as a proxy in front of a hostile agent) -----------


@pytest.mark.parametrize(
    ("key", "answer", "flags"),
    [
        (KEY, lambda p: sign_response(OTHER.sign(parse_sign_request(p)[1])), 0),
        (KEY, lambda p: sign_response(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x00"), 0),
        (RSA_KEY, _rsa_sha1, 4),
    ],
    ids=["another-key", "junk", "sha1-downgrade"],
)
def test_15_upstream_store_never_passes_on_a_bad_signature(
    tmp_path: Path, key: SoftwareKey, answer: Callable[[bytes], bytes], flags: int
) -> None:
    """A real agent whose ``upstream`` store points at a hostile agent: a signature the
    upstream made with another key, junk, or SHA-1 where rsa-sha2-512 was asked is a
    FAILURE to the client, never passed on as this key's signature."""
    from harness import running_agent

    from secretivex.client import AgentFailure, SyncAgentClient

    upstream = tmp_path / "up.sock"
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"stores:\n  - type: upstream\n    name: up\n    socket: {upstream}\n    timeout_ms: 5000\n"
    )
    script = _answers(identities((key.public_blob, "up-key")), answer)
    with (
        HostileAgent(upstream, script),
        running_agent(tmp_path, "--config", str(config)) as agent,
        SyncAgentClient.connect(agent.socket) as client,
    ):
        listed = [i.blob for i in client.list_identities()]
        assert listed == [key.public_blob], listed
        with pytest.raises(AgentFailure):
            client.sign(key.public_blob, b"data", flags)


# -- bench run against a hostile agent ------------------------------------------------


def _honest_signs(comment: str) -> Script:
    return _answers(
        identities((KEY.public_blob, comment)),
        lambda p: sign_response(KEY.sign(parse_sign_request(p)[1])),
    )


def test_15_bench_text_report_escapes_the_agents_key_comment(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _honest_signs(NASTY)):
        code, out = _on_a_terminal(
            [SECRETIVEX, "bench", "run", "--socket", str(sock), "-c", "1", "-n", "3",
             "--warmup", "0", "--no-progress"]
        )  # fmt: skip
    assert code == 0, out
    for raw in RAW_CONTROL:
        assert raw not in out, (raw, out)
    assert b"key: ssh-ed25519 " + KEY.fingerprint.encode() + b" \\x1b]0;owned" in out


@pytest.mark.parametrize(
    "answer",
    [
        lambda p: sign_response(OTHER.sign(parse_sign_request(p)[1])),
        lambda p: framed(b"\x0e\x00\x00\x00\xff"),
        lambda p: b"\xff\xff\xff\xff",
    ],
    ids=["another-key", "truncated", "length-2^32-1"],
)
def test_15_bench_run_hostile_preflight_is_one_line(
    tmp_path: Path, answer: Callable[[bytes], bytes]
) -> None:
    """bench run's preflight sign against a lying agent: one line, exit 1."""
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(identities((KEY.public_blob, "k")), answer)):
        proc = run(
            [SECRETIVEX, "bench", "run", "--socket", str(sock), "-c", "1", "-n", "3",
             "--no-progress"],
            check=False, timeout=120,
        )  # fmt: skip
    _one_clean_error_line(proc)


# -- the testcontainers readiness check -----------------------------------------------


def test_15_readiness_wait_never_outlasts_its_startup_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something on the socket that accepts and never answers: each readiness attempt
    is bounded by what is left of the startup timeout (it used to wait 10 s per try)."""
    from datetime import timedelta

    from secretivex.client import SyncAgentClient
    from secretivex.testing import container as module

    asked: list[float | None] = []
    real_connect = SyncAgentClient.connect

    def recording_connect(path: object, timeout: object = None, response_timeout: object = None):  # type: ignore[no-untyped-def]
        asked.append(response_timeout)  # type: ignore[arg-type]
        return real_connect(path, timeout, response_timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(module.SyncAgentClient, "connect", staticmethod(recording_connect))

    class Running:
        status = "running"

        def reload(self) -> None:
            pass

        def get_logs(self) -> tuple[bytes, bytes]:
            return b"", b""

    sock = tmp_path / "a.sock"
    strategy = module.AgentSocketWaitStrategy(sock, expected_keys=1)
    strategy.with_startup_timeout(timedelta(seconds=1))
    with HostileAgent(sock, None), pytest.raises(module.AgentNotReadyError):
        strategy.wait_until_ready(Running())  # type: ignore[arg-type]
    assert asked and all(t is not None and t <= 1.0 for t in asked), asked


def test_15_client_sign_unverifiable_key_type_needs_no_verify(tmp_path: Path) -> None:
    """A key type the client cannot verify (a security key) is refused before the sign
    request (no touch for nothing), naming --no-verify; with it, the answer is output."""
    data = tmp_path / "data"
    data.write_bytes(b"x")
    sk_blob = sstr("sk-ssh-ed25519@openssh.com") + sstr(b"\x01" * 32) + sstr("ssh:")
    from secretivex.keys.identity import fingerprint_sha256

    fp = fingerprint_sha256(sk_blob)
    answer = sign_response(sstr("sk-ssh-ed25519@openssh.com") + sstr(b"s" * 64) + b"\x01" + u32(7))
    sock = tmp_path / "a.sock"
    with HostileAgent(sock, _answers(identities((sk_blob, "sk")), lambda p: answer)) as agent:
        refused = _client(sock, "sign", "--key", fp, "--data", str(data))
        assert [p[0] for p in agent.requests] == [11]  # listed, never asked to sign
        unchecked = _client(sock, "sign", "--key", fp, "--data", str(data), "--no-verify")
    _one_clean_error_line(refused)
    assert "--no-verify" in refused.stderr
    assert unchecked.returncode == 0, unchecked.stderr
