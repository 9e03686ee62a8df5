"""key_from_wire / key_to_wire against the real OpenSSH peers.

* ``ssh-add`` talks to a recording socket: the ADD_IDENTITY fields it sends must load
  with ``key_from_wire`` and equal what ``key_to_wire`` produces.
* ``ssh-agent`` is given our ``key_to_wire`` output over the protocol and asked to
  sign: Ed25519 and RSA signatures (deterministic) must be byte-identical to ours for
  every flag combination; ECDSA ones must carry the same algorithm and both verify.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from test_keys import (
    PLAIN_TYPES,
    KeySet,
    make_keyset,
    pub_line,
    split_strings,
    ssh_string,
    verify_with_public_key,
)

from secretivex.keys import (
    KeyLoadError,
    SigningError,
    SoftwareKey,
    key_from_wire,
    key_to_wire,
    load_private_key_file,
    public_key_from_blob,
    verify_signature,
)

pytestmark = [
    pytest.mark.openssh,
    pytest.mark.skipif(
        shutil.which("ssh-add") is None or shutil.which("ssh-agent") is None,
        reason="needs ssh-add and ssh-agent",
    ),
]

SSH_AGENT_FAILURE = 5
SSH_AGENT_SUCCESS = 6
SSH_AGENTC_REQUEST_IDENTITIES = 11
SSH_AGENT_IDENTITIES_ANSWER = 12
SSH_AGENTC_SIGN_REQUEST = 13
SSH_AGENT_SIGN_RESPONSE = 14
SSH_AGENTC_ADD_IDENTITY = 17
SSH_AGENTC_ADD_ID_CONSTRAINED = 25

CERT = "-cert-v01@openssh.com"
#: Field layouts of ADD_IDENTITY per PROTOCOL.agent: s = string, m = mpint.
LAYOUTS = {
    "ssh-ed25519": "ss",
    "ecdsa-sha2-nistp256": "ssm",
    "ecdsa-sha2-nistp384": "ssm",
    "ecdsa-sha2-nistp521": "ssm",
    "ssh-rsa": "mmmmmm",
    "ssh-ed25519" + CERT: "sss",
    "ecdsa-sha2-nistp256" + CERT: "sm",
    "ecdsa-sha2-nistp384" + CERT: "sm",
    "ecdsa-sha2-nistp521" + CERT: "sm",
    "ssh-rsa" + CERT: "smmmm",
}


@pytest.fixture(scope="session")
def keyset() -> KeySet:
    return make_keyset()


def mpint(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big") if value else b""
    return ssh_string(body)


def encode_fields(fields: tuple[bytes | int, ...]) -> bytes:
    return b"".join(ssh_string(v) if isinstance(v, bytes) else mpint(v) for v in fields)


def parse_add_identity(message: bytes) -> tuple[str, tuple[bytes | int, ...], str]:
    """Independent parser of an ADD_IDENTITY message body (after the type byte)."""
    pos = 0

    def take() -> bytes:
        nonlocal pos
        (n,) = struct.unpack_from(">I", message, pos)
        value = message[pos + 4 : pos + 4 + n]
        assert len(value) == n
        pos += 4 + n
        return value

    key_type = take().decode()
    fields: list[bytes | int] = []
    for kind in LAYOUTS[key_type]:
        raw = take()
        fields.append(raw if kind == "s" else int.from_bytes(raw, "big"))
    comment = take().decode()
    assert pos == len(message), "unexpected constraints"
    return key_type, tuple(fields), comment


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def short_socket_path() -> Path:
    return Path(tempfile.mkdtemp(prefix="sx-", dir="/tmp")) / "a.sock"


def run_ssh_add(sock: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
    env.pop("SSH_ASKPASS", None)
    return subprocess.run(
        ["ssh-add", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=True,
    )


def capture_ssh_add(key_path: Path) -> list[bytes]:
    """Run the real ssh-add against a recording agent; return the ADD_IDENTITY bodies."""
    sock_path = short_socket_path()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(4)
    server.settimeout(0.2)
    added: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(30)
                try:
                    while True:
                        (n,) = struct.unpack(">I", recv_exact(conn, 4))
                        body = recv_exact(conn, n)
                        if body[0] in (SSH_AGENTC_ADD_IDENTITY, SSH_AGENTC_ADD_ID_CONSTRAINED):
                            added.append(body[1:])
                            reply = bytes([SSH_AGENT_SUCCESS])
                        elif body[0] == SSH_AGENTC_REQUEST_IDENTITIES:
                            reply = bytes([SSH_AGENT_IDENTITIES_ANSWER]) + struct.pack(">I", 0)
                        else:
                            reply = bytes([SSH_AGENT_FAILURE])
                        conn.sendall(struct.pack(">I", len(reply)) + reply)
                except (EOFError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        run_ssh_add(sock_path, key_path)
    finally:
        stop.set()
        thread.join(10)
        server.close()
        shutil.rmtree(sock_path.parent, ignore_errors=True)
    return added


class Agent:
    """A minimal client for a running agent (just enough for these tests)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, message: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(str(self.path))
            conn.sendall(struct.pack(">I", len(message)) + message)
            (n,) = struct.unpack(">I", recv_exact(conn, 4))
            return recv_exact(conn, n)

    def add(self, key: SoftwareKey) -> None:
        key_type, fields = key_to_wire(key)
        body = ssh_string(key_type.encode()) + encode_fields(fields) + ssh_string(b"added")
        assert self.request(bytes([SSH_AGENTC_ADD_IDENTITY]) + body) == bytes([SSH_AGENT_SUCCESS])

    def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        message = (
            bytes([SSH_AGENTC_SIGN_REQUEST])
            + ssh_string(blob)
            + ssh_string(data)
            + struct.pack(">I", flags)
        )
        reply = self.request(message)
        assert reply[0] == SSH_AGENT_SIGN_RESPONSE, reply
        (signature,) = split_strings(reply[1:])
        return signature


@pytest.fixture(scope="module")
def openssh_agent() -> Iterator[Agent]:
    sock_path = short_socket_path()
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock_path.exists():
            assert proc.poll() is None, "ssh-agent exited"
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        yield Agent(sock_path)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(sock_path.parent, ignore_errors=True)


def all_keys(keyset: KeySet) -> list[SoftwareKey]:
    keys = [load_private_key_file(keyset.plain(n)) for n in PLAIN_TYPES]
    keys += [load_private_key_file(keyset.certified(n)) for n in PLAIN_TYPES]
    return keys


# -- round trips ----------------------------------------------------------------------


def test_round_trip_every_type(keyset: KeySet) -> None:
    keys = all_keys(keyset)
    assert {k.key_type for k in keys} == set(LAYOUTS)
    for key in keys:
        key_type, fields = key_to_wire(key)
        assert key_type == key.key_type
        assert [type(v).__name__ for v in fields] == [
            "bytes" if kind == "s" else "int" for kind in LAYOUTS[key_type]
        ]
        again = key_from_wire(key_type, fields, key.comment)
        assert again.public_blob == key.public_blob
        assert again.plain_public_blob == key.plain_public_blob
        assert again.certificate == key.certificate
        assert again.fingerprint == key.fingerprint and again.comment == key.comment
        assert key_to_wire(again) == (key_type, fields)
        for flags in (0, 2, 4):
            data = b"round trip %d" % flags
            mine, theirs = key.sign(data, flags), again.sign(data, flags)
            if "ecdsa" in key_type:  # randomized: compare by verification
                assert split_strings(mine)[0] == split_strings(theirs)[0]
                assert verify_signature(key.public_blob, data, theirs)
            else:
                assert mine == theirs


def test_mpints_may_arrive_as_raw_bytes(keyset: KeySet) -> None:
    key = load_private_key_file(keyset.plain("rsa"))
    key_type, fields = key_to_wire(key)
    as_bytes = tuple(split_strings(mpint(v))[0] if isinstance(v, int) else v for v in fields)
    assert key_from_wire(key_type, as_bytes, "x").public_blob == key.public_blob


@pytest.mark.parametrize("name", PLAIN_TYPES)
def test_fields_sent_by_real_ssh_add(keyset: KeySet, name: str) -> None:
    """ssh-add sends the plain key then its certificate; both must load identically."""
    path = keyset.certified(name)
    messages = capture_ssh_add(path)
    assert len(messages) == 2
    expected_comment = pub_line(Path(f"{path}.pub"))[2]
    loaded = load_private_key_file(path)
    plain = SoftwareKey(loaded.private_key, loaded.comment)
    for body, expected in zip(messages, (plain, loaded), strict=True):
        key_type, fields, comment = parse_add_identity(body)
        assert comment == expected_comment
        key = key_from_wire(key_type, fields, comment)
        assert key.key_type == key_type == expected.key_type
        assert key.public_blob == expected.public_blob
        assert key_to_wire(key) == (key_type, fields)


# -- byte-for-byte against OpenSSH's own agent ------------------------------------------


def generated_keys() -> list[SoftwareKey]:
    privates = [
        Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP521R1()),
        rsa.generate_private_key(65537, 2048),
    ]
    return [SoftwareKey(p, "generated") for p in privates]


def test_signatures_match_openssh_agent(keyset: KeySet, openssh_agent: Agent) -> None:
    keys = all_keys(keyset) + generated_keys()
    for key in keys:
        openssh_agent.add(key)
    data = b"\x00\x00\x00\x20" + bytes(range(32)) + b"\x32userauth request body"
    for key in keys:
        for flags in (0, 1, 2, 4, 6, 0xF8):
            theirs = openssh_agent.sign(key.public_blob, data, flags)
            mine = key.sign(data, flags)
            if "ecdsa" in key.key_type:
                assert split_strings(mine)[0] == split_strings(theirs)[0]
                public = public_key_from_blob(key.public_blob)
                verify_with_public_key(public, data, mine)
                verify_with_public_key(public, data, theirs)
            else:
                assert mine == theirs, (key.key_type, flags)


# -- bad input ------------------------------------------------------------------------


def _fields(keyset: KeySet, name: str, cert: bool = False) -> tuple[str, tuple[bytes | int, ...]]:
    path = keyset.certified(name) if cert else keyset.plain(name)
    return key_to_wire(load_private_key_file(path))


def _error(key_type: str, fields: tuple[bytes | int, ...], secrets: list[bytes | int]) -> str:
    with pytest.raises(KeyLoadError) as info:
        key_from_wire(key_type, fields, "alice@laptop")
    message = str(info.value)
    assert message.startswith("added ")
    assert "'alice@laptop'" in message
    for secret in secrets:
        if isinstance(secret, bytes):
            assert secret.hex() not in message
        else:
            assert str(secret) not in message and f"{secret:x}" not in message
    assert info.value.__cause__ is None
    return message


def test_unsupported_types() -> None:
    for key_type in (
        "ssh-dss",
        "ssh-dss-cert-v01@openssh.com",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-ed448",
        "rsa-sha2-256",
    ):
        message = _error(key_type, (b"x",), [])
        assert message.endswith(f": unsupported key type {key_type}")
    assert "\n" not in _error("bad\ntype", (), [])


def test_truncated_and_mistyped_fields(keyset: KeySet) -> None:
    for name in PLAIN_TYPES:
        for cert in (False, True):
            key_type, fields = _fields(keyset, name, cert)
            message = _error(key_type, fields[:-1], [])
            assert f"({len(fields) - 1} fields, expected {len(fields)})" in message
            _error(key_type, (*fields, b"extra"), [])
            flipped = tuple(7 if isinstance(v, bytes) else b"\x01\x02" for v in fields)
            _error(key_type, flipped, [])


def test_ed25519_inconsistent(keyset: KeySet) -> None:
    key_type, (pub, priv) = _fields(keyset, "ed25519")
    assert isinstance(pub, bytes) and isinstance(priv, bytes)
    other = Ed25519PrivateKey.generate().private_bytes_raw()
    msg = _error(key_type, (pub, other + pub), [other, priv])
    assert msg.endswith("private key does not match its public key")
    _error(key_type, (pub, priv[:32] + bytes(32)), [priv])
    _error(key_type, (pub, priv[:63]), [priv])
    _error(key_type, (pub[:31], priv), [priv])


def test_ecdsa_inconsistent(keyset: KeySet) -> None:
    key_type, (curve, point, d) = _fields(keyset, "ecdsa384")
    assert isinstance(d, int)
    msg = _error(key_type, (curve, point, d + 1), [d, d + 1])
    assert msg.endswith("private key does not match its public key")
    assert "curve name" in _error(key_type, (b"nistp256", point, d), [d])
    _error(key_type, (curve, point, 0), [d])
    order = int(  # the P-384 group order: not a valid private value
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "C7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    )
    _error(key_type, (curve, point, order), [d])
    _error(key_type, (curve, point, -d), [d])


def test_rsa_inconsistent(keyset: KeySet) -> None:
    key_type, (n, e, d, iqmp, p, q) = _fields(keyset, "rsa")
    assert all(isinstance(v, int) for v in (n, e, d, iqmp, p, q))
    secrets: list[bytes | int] = [d, p, q, iqmp]
    assert _error(key_type, (n, e, d, iqmp, p + 2, q), secrets).endswith(
        "does not match its public key"
    )
    assert isinstance(iqmp, int) and isinstance(d, int)
    _error(key_type, (n, e, d, iqmp + 1, p, q), secrets)
    _error(key_type, (n, e, d + 2, iqmp, p, q), secrets)
    _error(key_type, (n, e, d, iqmp, 1, n), secrets)
    small_n = (1 << 767) | 1
    assert "RSA key too small (768 bits" in _error(key_type, (small_n, e, 1, 1, 3, 3), [])


def test_certificate_inconsistent(keyset: KeySet) -> None:
    ed_type, (ed_cert, ed_pub, ed_priv) = _fields(keyset, "ed25519", cert=True)
    _, (ec_cert, ec_d) = _fields(keyset, "ecdsa256", cert=True)
    message = _error(ed_type, (ec_cert, ed_pub, ed_priv), [ed_priv])
    assert message.endswith("certificate type does not match key type")
    assert isinstance(ed_cert, bytes)
    tampered = ed_cert[:-1] + bytes([ed_cert[-1] ^ 1])
    assert _error(ed_type, (tampered, ed_pub, ed_priv), [ed_priv]).endswith(
        "certificate signature does not verify"
    )
    assert "malformed" in _error(ed_type, (ed_cert[:60], ed_pub, ed_priv), [])
    assert "does not match key type" in _error(ed_type, (b"\x00\x00\x00\x01x", ed_pub, ed_priv), [])
    fresh = Ed25519PrivateKey.generate()
    fresh_pub = fresh.public_key().public_bytes_raw()
    fresh_priv = fresh.private_bytes_raw() + fresh_pub
    assert _error(ed_type, (ed_cert, fresh_pub, fresh_priv), [fresh_priv]).endswith(
        "certificate is for a different key"
    )
    ec_type = "ecdsa-sha2-nistp256" + CERT
    assert isinstance(ec_d, int)
    _error(ec_type, (ec_cert, ec_d + 1), [ec_d])
    rsa_type, rsa_fields = _fields(keyset, "rsa", cert=True)
    _error(rsa_type, (ed_cert, *rsa_fields[1:]), [])


FIELD = st.one_of(st.binary(max_size=80), st.integers(min_value=-5, max_value=2**600))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(LAYOUTS)), st.lists(FIELD, max_size=7))
def test_key_from_wire_only_raises_key_load_error(key_type: str, fields: list[bytes | int]) -> None:
    with contextlib.suppress(KeyLoadError):
        key_from_wire(key_type, tuple(fields), "fuzz")


def test_sign_errors_are_sign_errors(keyset: KeySet) -> None:
    key = load_private_key_file(keyset.plain("ecdsa256"))
    with pytest.raises(SigningError):
        key.sign("not bytes")  # type: ignore[arg-type]
