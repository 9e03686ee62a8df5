"""Differential conformance: the same messages to OpenSSH's ``ssh-agent`` and to ours.

Both agents start empty (secretivex with zero keys of its own, on its main socket) and
get byte-identical requests built in ``openssh_peer`` (raw bytes + ``cryptography``).
What a client can observe is compared: the reply type, the identity list (blobs,
comments, order), whether a signature verifies (checked with ``cryptography``), and
whether the connection was closed.

Where secretivex deliberately differs, the test asserts both sides of the documented
deviation (docs/protocol.md, "Differences from OpenSSH's ssh-agent"); everything else
must be equal. The installed ssh-agent is the reference (Debian 12: OpenSSH 9.2); where
a later OpenSSH changed a behaviour we follow, the test says which release.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openssh_peer as w
import pytest
from harness import (
    AgentProcess,
    openssh_agent,
    require_tool,
    run,
    start_agent,
    wait_until,
)
from openssh_peer import CLOSED, Client, Observation, WireKey

pytestmark = pytest.mark.openssh

PASS = b"conform-passphrase"
OTHER_PASS = b"other"


@dataclass
class Agents:
    ours: AgentProcess
    theirs_socket: Path
    theirs: subprocess.Popen[bytes]

    def connect(self) -> Conn:
        return Conn(Client(self.ours.socket), Client(self.theirs_socket))

    def reset(self) -> None:
        """Unlocked and empty again (a test may leave either agent locked)."""
        with self.connect() as c:
            for passphrase in (PASS, OTHER_PASS):
                if c.both(w.unlock(passphrase)) == (OK, OK):
                    break
            assert c.same(w.REMOVE_ALL_MSG, "reset") == Observation("SUCCESS")
            assert c.same(w.LIST, "reset listing") == Observation("IDENTITIES_ANSWER")


class Conn:
    """A connection to each agent; ``same`` sends one message to both and compares."""

    def __init__(self, ours: Client, theirs: Client) -> None:
        self.ours = ours
        self.theirs = theirs
        self.log: list[str] = []

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ours.close()
        self.theirs.close()

    def both(self, payload: bytes) -> tuple[Observation, Observation]:
        ours, theirs = self.ours.request(payload), self.theirs.request(payload)
        self.log.append(f"{payload[:1].hex()}: ours={ours} openssh={theirs}")
        return ours, theirs

    def same(self, payload: bytes, what: str) -> Observation:
        ours, theirs = self.both(payload)
        assert ours == theirs, (
            f"{what}: secretivex answered {ours}, OpenSSH's ssh-agent {theirs}\n"
            + "\n".join(self.log[-12:])
        )
        return ours

    def raw(self, data: bytes) -> tuple[Observation, Observation]:
        """Send arbitrary bytes (a frame of our making) and read one reply from each."""
        for client in (self.ours, self.theirs):
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                client.send_raw(data)
        return self.ours.read_reply(), self.theirs.read_reply()


@contextlib.contextmanager
def both_agents(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Agents]:
    """A real ``ssh-agent -D`` and an empty ``secretivex agent`` side by side (``env``:
    extra variables for both), stopped afterwards."""
    require_tool("ssh-agent")
    theirs_env = {**os.environ, **(env or {})}
    theirs_env.update(SSH_ASKPASS="/bin/false", SSH_ASKPASS_REQUIRE="force")
    theirs_env.pop("DISPLAY", None)
    with openssh_agent(tmp / "openssh", theirs_env) as theirs:
        (tmp / "ours").mkdir()
        ours = start_agent(tmp / "ours", env=env)
        try:
            yield Agents(ours, theirs.socket, theirs.proc)
        finally:
            ours.stop()


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    with both_agents(tmp_path_factory.mktemp("conform")) as pair:
        yield pair


@pytest.fixture
def pair(agents: Agents) -> Iterator[Agents]:
    for proc in (agents.ours.proc, agents.theirs):
        assert proc.poll() is None, "an agent died in an earlier test"
    agents.reset()
    yield agents
    agents.reset()


KEYS = {
    "ed25519": w.ed25519_key,
    "nistp256": lambda: w.ecdsa_key("nistp256"),
    "nistp384": lambda: w.ecdsa_key("nistp384"),
    "nistp521": lambda: w.ecdsa_key("nistp521"),
    "rsa": lambda: w.rsa_key(2048),
}


@pytest.fixture(scope="module")
def keys() -> dict[str, WireKey]:
    return {name: make() for name, make in KEYS.items()}


def listing(*items: tuple[WireKey, str]) -> Observation:
    return Observation(
        "IDENTITIES_ANSWER", tuple((k.blob, comment.encode()) for k, comment in items)
    )


FAIL = Observation("FAILURE")
OK = Observation("SUCCESS")
EMPTY = Observation("IDENTITIES_ANSWER")


# ------------------------------------------------------------------ add / remove / sign


@pytest.mark.parametrize("name", list(KEYS))
def test_add_sign_remove_each_key_type(pair: Agents, keys: dict[str, WireKey], name: str) -> None:
    key = keys[name]
    with pair.connect() as c:
        assert c.same(key.add(f"conform-{name}"), "add") == OK
        assert c.same(w.LIST, "list") == listing((key, f"conform-{name}"))
        flag_sets = [0, w.SIGN_RSA_SHA2_256, w.SIGN_RSA_SHA2_512, 6, 1, 8, 0x80000000]
        for flags in flag_sets:
            got = c.same(key.sign(b"conform data", flags), f"sign flags={flags:#x}")
            assert got.kind == "SIGN_RESPONSE" and got.signature.startswith("valid:"), got
        assert c.same(key.remove(), "remove") == OK
        assert c.same(w.LIST, "list after remove") == EMPTY
        assert c.same(key.remove(), "remove of an absent key") == FAIL
        assert c.same(key.sign(b"data"), "sign with an absent key") == FAIL


def test_rsa_signature_algorithm_follows_flags(pair: Agents, keys: dict[str, WireKey]) -> None:
    key = keys["rsa"]
    expected = {0: "ssh-rsa", 2: "rsa-sha2-256", 4: "rsa-sha2-512", 6: "rsa-sha2-256"}
    with pair.connect() as c:
        c.same(key.add("rsa"), "add")
        for flags, alg in expected.items():
            assert c.same(key.sign(b"d", flags), f"flags {flags}").signature == f"valid:{alg}"


def test_duplicate_add_replaces_comment_and_keeps_position(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    a, b, e = keys["ed25519"], keys["nistp256"], keys["rsa"]
    with pair.connect() as c:
        for key, comment in ((a, "first"), (b, "second"), (e, "third")):
            assert c.same(key.add(comment), "add") == OK
        assert c.same(b.add("second-renamed", w.lifetime(3600)), "re-add constrained") == OK
        assert c.same(w.LIST, "list") == listing((a, "first"), (b, "second-renamed"), (e, "third"))
        assert c.same(b.add("plain again"), "re-add without constraints") == OK
        assert c.same(w.LIST, "list") == listing((a, "first"), (b, "plain again"), (e, "third"))
        assert c.same(b.add(""), "re-add with an empty comment") == OK
        assert c.same(w.LIST, "list") == listing((a, "first"), (b, ""), (e, "third"))


def test_remove_all_clears_every_key(pair: Agents, keys: dict[str, WireKey]) -> None:
    with pair.connect() as c:
        for name, key in keys.items():
            c.same(key.add(name), "add")
        assert c.same(w.REMOVE_ALL_MSG, "remove all") == OK
        assert c.same(w.LIST, "list") == EMPTY
        assert c.same(w.REMOVE_ALL_MSG, "remove all when empty") == OK


def test_ssh1_remove_all_rsa_identities_removes_all_keys(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    """``ssh-add -D`` sends SSH_AGENTC_REMOVE_ALL_RSA_IDENTITIES (9) after 19 "since
    the agent might be forwarded, old or non-OpenSSH"; OpenSSH answers it as 19."""
    with pair.connect() as c:
        c.same(keys["ed25519"].add("k"), "add")
        assert c.same(bytes((w.SSH1_REMOVE_ALL_RSA_IDENTITIES,)), "SSH1 remove all") == OK
        assert c.same(w.LIST, "list") == EMPTY


# ---------------------------------------------------------------------------- locking


def test_lock_unlock_and_requests_while_locked(pair: Agents, keys: dict[str, WireKey]) -> None:
    key, other = keys["ed25519"], keys["nistp384"]
    with pair.connect() as c:
        c.same(key.add("k"), "add")
        assert c.same(w.unlock(PASS), "unlock when not locked") == FAIL
        assert c.same(w.lock(b""), "lock with an empty passphrase") == FAIL
        assert c.same(w.lock(PASS), "lock") == OK
        assert c.same(w.lock(PASS), "lock when locked") == FAIL
        assert c.same(w.lock(b"other"), "lock when locked, other passphrase") == FAIL
        assert c.same(w.LIST, "list while locked") == EMPTY
        assert c.same(key.sign(b"d"), "sign while locked") == FAIL
        assert c.same(other.add("o"), "add while locked") == FAIL
        assert c.same(key.remove(), "remove while locked") == FAIL
        assert c.same(w.REMOVE_ALL_MSG, "remove all while locked") == FAIL
        assert c.same(bytes((w.SSH1_REMOVE_ALL_RSA_IDENTITIES,)), "SSH1 remove all") == FAIL
        assert c.same(bytes((w.ADD_SMARTCARD,)) + w.string("/x.so") + w.string(""), "sc") == FAIL
        assert c.same(w.extension("no-such@example.com"), "unknown ext while locked") == FAIL
        assert c.same(w.extension("query"), "query while locked") == FAIL
        assert c.same(bytes((200,)), "unknown message while locked") == FAIL
        assert c.same(w.unlock(b""), "unlock with an empty passphrase") == FAIL
        assert c.same(w.unlock(b"wrong"), "unlock with a wrong passphrase") == FAIL
        assert c.same(w.unlock(PASS), "unlock") == OK
        assert c.same(w.LIST, "list after unlock") == listing((key, "k"))
        assert c.same(key.sign(b"d"), "sign after unlock").signature == "valid:ssh-ed25519"
        assert c.same(w.unlock(PASS), "unlock twice") == FAIL


# ------------------------------------------------------------------------ constraints


def test_constraints(pair: Agents, keys: dict[str, WireKey]) -> None:
    key, host = keys["nistp256"], keys["ed25519"]
    with pair.connect() as c:
        assert c.same(key.add("life", w.lifetime(3600)), "lifetime") == OK
        assert c.same(key.sign(b"d"), "sign").signature.startswith("valid:")
        assert c.same(key.add("life", w.lifetime(1) + w.lifetime(2)), "lifetime twice") == FAIL
        assert c.same(key.add("c", w.confirm() + w.confirm()), "confirm twice") == FAIL
        assert c.same(key.add("u", b"\x07"), "unknown constraint type") == FAIL
        assert c.same(key.add("u", b"\x01\x00"), "truncated lifetime") == FAIL
        unknown_ext = b"\xff" + w.string("no-such@example.com") + w.string(b"")
        assert c.same(key.add("x", unknown_ext), "unknown constraint extension") == FAIL
        assert c.same(key.add("m", b"\x03" + w.u32(5)), "maxsign on a non-XMSS key") == FAIL
        assert c.same(w.LIST, "list") == listing((key, "life"))
        # restrict-destination: listed everywhere, never signs on an unbound connection
        dest = w.restrict_destination((w.hop(), w.hop(hostname="h1", keys=(host.blob,))))
        assert c.same(key.add("dest", dest), "restrict-destination") == OK
        assert c.same(w.LIST, "list") == listing((key, "dest"))
        assert c.same(key.sign(b"d"), "sign on an unbound connection") == FAIL
        bad_dest = w.restrict_destination((w.hop(), w.hop(hostname="h1")))
        assert c.same(key.add("bad", bad_dest), "destination without host keys") == FAIL


def test_zero_lifetime_key_expires_at_once(pair: Agents, keys: dict[str, WireKey]) -> None:
    """``lifetime 0`` is a lifetime that has already run out (OpenSSH sets death = now)."""
    key = keys["ed25519"]
    with pair.connect() as c:
        assert c.same(key.add("zero", w.lifetime(0)), "add with lifetime 0") == OK
        assert c.same(w.LIST, "list") == EMPTY
        assert c.same(key.sign(b"d"), "sign") == FAIL


def test_confirm_constraint_without_approval_refuses(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    """A confirm key signs only when approved: ssh-agent's askpass (here /bin/false)
    and ours without a configured confirm command both refuse."""
    key = keys["ed25519"]
    with pair.connect() as c:
        assert c.same(key.add("confirm", w.confirm()), "add with confirm") == OK
        assert c.same(w.LIST, "list") == listing((key, "confirm"))
        assert c.same(key.sign(b"d"), "sign needing confirmation") == FAIL


def test_add_smartcard_with_bogus_provider(pair: Agents) -> None:
    with pair.connect() as c:
        for provider in ("/nonexistent/libbogus.so", "/usr/lib/libbogus.so", "relative.so"):
            add = bytes((w.ADD_SMARTCARD,)) + w.string(provider) + w.string("1234")
            assert c.same(add, f"add smartcard {provider}") == FAIL
            remove = bytes((w.REMOVE_SMARTCARD,)) + w.string(provider) + w.string("")
            assert c.same(remove, f"remove smartcard {provider}") == FAIL
        assert c.same(w.LIST, "list") == EMPTY


# ------------------------------------------------------------------------- extensions


def test_extensions(pair: Agents, keys: dict[str, WireKey]) -> None:
    host = keys["ed25519"]
    with pair.connect() as c:
        assert c.same(w.extension("no-such@example.com"), "unknown extension") == FAIL
        assert c.same(bytes((w.EXTENSION,)), "extension without a name") == FAIL
        sid = b"\x11" * 32
        assert c.same(w.session_bind(host, sid, False, bad=True), "bad bind signature") == FAIL
        assert c.same(w.session_bind(host, sid, False), "session-bind") == OK
        # bound for authentication: no further bind, not even the same one again
        assert c.same(w.session_bind(host, sid, False), "the same auth bind again") == FAIL
        assert c.same(w.session_bind(host, b"\x22" * 32, False), "second auth bind") == FAIL
    with pair.connect() as c:
        for i in range(3):
            assert c.same(w.session_bind(host, bytes((i,)) * 32, True), f"fwd hop {i}") == OK
        assert c.same(w.session_bind(host, b"\x01" * 32, True), "same fwd bind again") == OK
        other = w.ed25519_key()
        assert c.same(w.session_bind(other, b"\x01" * 32, True), "sid, other key") == FAIL
        truncated = w.extension("session-bind@openssh.com", w.string(host.blob))
        assert c.same(truncated, "truncated session-bind") == FAIL


def test_query_extension_is_answered(pair: Agents) -> None:
    """Documented deviation from OpenSSH 9.2: ``query`` arrived in OpenSSH 10.3, which
    answers it as we do; 9.2 does not know it (plain FAILURE)."""
    with pair.connect() as c:
        ours, theirs = c.both(w.extension("query"))
        assert theirs in (FAIL, Observation("EXTENSION_RESPONSE", contents=ours.contents)), theirs
        assert ours.kind == "EXTENSION_RESPONSE"
        names = w.strings(ours.contents)
        assert names[0] == b"query" and b"session-bind@openssh.com" in names[1:]


def _destination_setup(
    c: Conn, key: WireKey, host_b: WireKey, host_c: WireKey
) -> tuple[bytes, bytes]:
    # key may be used from here (A) to B, and from A to C; never from B onwards
    dest = w.restrict_destination(
        (w.hop(), w.hop(hostname="b", keys=(host_b.blob,))),
        (w.hop(), w.hop(hostname="c", keys=(host_c.blob,))),
    )
    assert c.same(key.add("dest", dest), "add destination-constrained") == OK
    return b"\xaa" * 32, b"\xbb" * 32


def test_destination_constraints_on_a_direct_and_a_forwarded_connection(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    key, host_b, host_c = keys["nistp256"], w.ed25519_key(), w.ed25519_key()
    with pair.connect() as c:
        sid_ab, sid_bc = _destination_setup(c, key, host_b, host_c)
    with pair.connect() as c:  # ssh on A authenticating to C directly
        assert c.same(w.session_bind(host_c, sid_bc, False), "bind A->C") == OK
        auth = key.sign(w.userauth_request(sid_bc, "u", key, host_c))
        assert c.same(auth, "sign userauth A->C").signature.startswith("valid:")
    with pair.connect() as c:  # forwarded to B, then B's ssh authenticates to C
        assert c.same(w.session_bind(host_b, sid_ab, True), "bind A->B forwarding") == OK
        assert c.same(w.session_bind(host_c, sid_bc, False), "bind B->C") == OK
        assert c.same(w.LIST, "list on a forwarded connection") == EMPTY
        auth = key.sign(w.userauth_request(sid_bc, "u", key, host_c))
        assert c.same(auth, "sign userauth B->C") == FAIL


def test_session_bind_while_locked_keeps_a_forwarded_connection_remote(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    """OpenSSH 10.5 (commit 6a57081d) processes session-bind while locked: otherwise a
    connection forwarded while the agent was locked stays unbound, and after unlock its
    next hop's bind looks like a direct connection from the user's host, so keys
    restricted to "from here to C" sign for B's ssh connecting to C. The reference
    ssh-agent (9.2) still has that hole; we match the fix."""
    key, host_b, host_c = keys["nistp256"], w.ed25519_key(), w.ed25519_key()
    with pair.connect() as c:
        sid_ab, sid_bc = _destination_setup(c, key, host_b, host_c)
        assert c.same(w.lock(PASS), "lock") == OK
    with pair.connect() as fwd, pair.connect() as owner:
        ours, theirs = fwd.both(w.session_bind(host_b, sid_ab, True))
        assert ours == OK, "session-bind while locked must be processed (OpenSSH >= 10.5)"
        assert theirs in (OK, FAIL)  # FAIL: OpenSSH before 10.5
        assert fwd.same(w.session_bind(host_b, sid_ab, True, bad=True), "bad bind") == FAIL
        assert fwd.same(key.sign(b"d"), "sign while locked") == FAIL
        assert owner.same(w.unlock(PASS), "unlock") == OK
        assert fwd.same(w.session_bind(host_c, sid_bc, False), "bind B->C") == OK
        auth = key.sign(w.userauth_request(sid_bc, "u", key, host_c))
        ours, theirs = fwd.both(auth)
        assert ours == FAIL, f"forwarded connection signed as if direct: {ours}"
        if theirs != FAIL:
            assert theirs.signature.startswith("valid:")  # OpenSSH < 10.5: the hole


# ---------------------------------------------------------------- unknown and malformed

UNKNOWN_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15, 16, 24, 28, 29, 30, 99, 128, 255]


def test_unknown_and_ssh1_message_numbers(pair: Agents, keys: dict[str, WireKey]) -> None:
    key = keys["ed25519"]
    with pair.connect() as c:
        c.same(key.add("k"), "add")
        for t in UNKNOWN_TYPES:
            assert c.same(bytes((t,)), f"message {t}") == FAIL
            assert c.same(bytes((t,)) + b"\x00\x00\x00\x05hello", f"message {t} + body") == FAIL
        # SSH1 "request RSA identities", "RSA challenge", "add/remove RSA identity"
        assert c.same(w.LIST, "still usable, key kept") == listing((key, "k"))


def test_framing_errors(pair: Agents) -> None:
    for what, data in (
        ("zero-length frame", w.u32(0) + b"\x0b"),
        ("oversized frame", w.u32(256 * 1024 + 1) + b"\x0b"),
        ("huge frame", b"\xff\xff\xff\xff\x0b"),  # OpenSSH reads 5 bytes before judging
    ):
        with pair.connect() as c:
            ours, theirs = c.raw(data)
            assert (ours, theirs) == (CLOSED, CLOSED), f"{what}: {ours} / {theirs}"
    with pair.connect() as c:  # the largest frame is read and answered
        ours, theirs = c.raw(w.u32(256 * 1024) + bytes((99,)) + bytes(256 * 1024 - 1))
        assert ours == theirs == FAIL


TRAILING = ["request identities", "sign", "remove identity", "remove all", "unlock"]


def _trailing_case(keys: dict[str, WireKey], what: str) -> bytes:
    key = keys["ed25519"]
    return {
        "request identities": w.LIST,
        "sign": key.sign(b"d"),
        "remove identity": key.remove(),
        "remove all": w.REMOVE_ALL_MSG,
        "unlock": w.unlock(b"x"),
    }[what]


@pytest.mark.parametrize("what", TRAILING)
def test_trailing_bytes_are_refused(pair: Agents, keys: dict[str, WireKey], what: str) -> None:
    """Documented deviation: OpenSSH ignores bytes after a message's last field (and
    acts on the message); our codec is strict and answers FAILURE, changing nothing
    (the connection stays usable)."""
    key = keys["ed25519"]
    with pair.connect() as c:
        c.same(key.add("k"), "add")
        ours, theirs = c.both(_trailing_case(keys, what) + b"\x00junk")
        assert ours == FAIL, f"{what} with trailing bytes: {ours}"
        assert theirs != CLOSED
        assert c.ours.request(w.LIST) == listing((key, "k"))


def test_extension_contents_of_query_are_ignored(pair: Agents) -> None:
    """``query`` takes no contents; like OpenSSH 10.3+ we ignore any that come."""
    with pair.connect() as c:
        ours, _ = c.both(w.extension("query", b"\x00junk"))
        assert ours.kind == "EXTENSION_RESPONSE"


def test_malformed_bodies(pair: Agents, keys: dict[str, WireKey]) -> None:
    key = keys["ed25519"]
    with pair.connect() as c:
        c.same(key.add("k"), "add")
        for what, payload in (
            ("sign, truncated key blob", bytes((w.SIGN_REQUEST,)) + w.u32(50) + b"abc"),
            ("sign without flags", bytes((w.SIGN_REQUEST,)) + w.string(key.blob) + w.string(b"")),
            ("sign, garbage key blob", bytes((w.SIGN_REQUEST,)) + w.string(b"junk") * 2 + w.u32(0)),
            ("add, truncated", bytes((w.ADD_IDENTITY,)) + key.private_wire[:20]),
            ("add, unknown key type", bytes((w.ADD_IDENTITY,)) + w.string("ssh-foo") * 3),
            ("add, no comment", bytes((w.ADD_IDENTITY,)) + key.private_wire),
            ("remove, garbage", bytes((w.REMOVE_IDENTITY,)) + w.string(b"junk")),
            ("remove, empty", bytes((w.REMOVE_IDENTITY,))),
            ("extension, bad name length", bytes((w.EXTENSION,)) + w.u32(99)),
            ("smartcard, truncated", bytes((w.ADD_SMARTCARD,)) + w.u32(9)),
        ):
            assert c.same(payload, what) == FAIL
        assert c.same(w.LIST, "still usable") == listing((key, "k"))


def test_malformed_lock_is_refused_not_fatal(agents: Agents) -> None:
    """Documented deviation: OpenSSH's ssh-agent exits on a lock/unlock it cannot parse
    ("deliberately fatal"); we answer FAILURE and keep serving. Only our agent is asked."""
    client = Client(agents.ours.socket)
    try:
        for payload in (
            bytes((w.LOCK,)),
            bytes((w.LOCK,)) + w.u32(40) + b"x",
            bytes((w.UNLOCK,)),
            w.lock(b"pass\x00word"),  # a C string with a NUL: malformed (fatal to OpenSSH)
        ):
            assert client.request(payload) == FAIL, payload
        assert client.request(w.LIST) == EMPTY
        assert client.request(w.unlock(b"pass\x00word")) == FAIL  # it never locked
    finally:
        client.close()


# --------------------------------------------------------------- session-bind hardening


def test_failed_session_bind_hides_destination_constrained_keys(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    """OpenSSH 9.6 (commit 6d51feab): a connection whose session-bind failed is not a
    local one; destination-constrained keys are neither listed nor used there. The
    reference 9.2 still lists them."""
    key, plain, host = keys["nistp256"], keys["ed25519"], w.ed25519_key()
    with pair.connect() as c:
        dest = w.restrict_destination((w.hop(), w.hop(hostname="h", keys=(host.blob,))))
        c.same(key.add("dest", dest), "add constrained")
        c.same(plain.add("plain"), "add plain")
        assert c.same(w.LIST, "list on a fresh connection") == listing(
            (key, "dest"), (plain, "plain")
        )
        assert c.same(w.session_bind(host, b"\x01" * 32, False, bad=True), "bad bind") == FAIL
        ours, theirs = c.both(w.LIST)
        assert ours == listing((plain, "plain")), ours
        assert theirs in (ours, listing((key, "dest"), (plain, "plain")))  # < 9.6
        assert c.same(key.sign(b"d"), "sign with the constrained key") == FAIL


def test_overlong_session_id_is_refused(pair: Agents) -> None:
    """OpenSSH 10.x refuses session ids over 128 bytes (AGENT_MAX_SID_LEN); without a
    cap a client could pin 16 x 256 KiB of ids per connection."""
    host = w.ed25519_key()
    with pair.connect() as c:
        ours, theirs = c.both(w.session_bind(host, b"\x05" * 129, False))
        assert ours == FAIL and theirs in (OK, FAIL)  # 9.2 accepts it
    with pair.connect() as c:
        assert c.same(w.session_bind(host, b"\x05" * 128, False), "128-byte id") == OK


# ------------------------------------------------------------ seeded random sequences

RANDOM_SEED = int(os.environ.get("SECRETIVEX_CONFORM_SEED", "6"))
RANDOM_STEPS = int(os.environ.get("SECRETIVEX_CONFORM_STEPS", "300"))


def test_seeded_random_sequence_matches_openssh(pair: Agents, keys: dict[str, WireKey]) -> None:
    """A few hundred random steps over the behaviours both agents share; any
    difference fails with the seed and the last steps (SECRETIVEX_CONFORM_SEED/STEPS)."""
    rng = random.Random(RANDOM_SEED)
    pool = [keys["ed25519"], keys["nistp256"], keys["nistp384"], keys["rsa"]]
    comments = ["", "a", "b c", "ünïcode"]
    passphrases = [PASS, PASS, OTHER_PASS]
    conns = [pair.connect(), pair.connect()]
    try:
        for step in range(RANDOM_STEPS):
            i = rng.randrange(len(conns))
            c = conns[i]
            op = rng.choices(
                [
                    "add",
                    "remove",
                    "remove_all",
                    "list",
                    "sign",
                    "lock",
                    "unlock",
                    "unknown",
                    "truncated",
                    "extension",
                    "reconnect",
                ],
                weights=[14, 6, 2, 12, 16, 3, 3, 4, 6, 3, 2],
            )[0]
            key = rng.choice(pool)
            payload: bytes | None
            if op == "add":
                constraints = rng.choice([b"", b"", w.lifetime(3600), w.lifetime(0)])
                payload = key.add(rng.choice(comments), constraints)
            elif op == "remove":
                payload = key.remove()
            elif op == "remove_all":
                payload = bytes((rng.choice([w.REMOVE_ALL, w.SSH1_REMOVE_ALL_RSA_IDENTITIES]),))
            elif op == "list":
                payload = w.LIST
            elif op == "sign":
                payload = key.sign(rng.randbytes(rng.randrange(0, 64)), rng.choice([0, 2, 4, 1]))
            elif op == "lock":
                payload = w.lock(rng.choice([*passphrases, b""]))
            elif op == "unlock":
                payload = w.unlock(rng.choice(passphrases))
            elif op == "unknown":
                payload = bytes((rng.choice(UNKNOWN_TYPES),)) + rng.randbytes(rng.randrange(8))
            elif op == "truncated":
                whole = rng.choice([key.add("t"), key.sign(b"data"), key.remove()])
                payload = whole[: rng.randrange(1, len(whole))]
            elif op == "extension":
                payload = w.extension(rng.choice(["nope@example.com", "x"]))
            else:
                conns[i].__exit__()
                conns[i] = pair.connect()
                continue
            c.same(payload, f"seed {RANDOM_SEED} step {step} ({op})")
    finally:
        for c in conns:
            c.__exit__()


# ------------------------------------------------------------------ key and field checks


def _bad_keys(keys: dict[str, WireKey]) -> list[tuple[str, bytes]]:
    ed, p256 = keys["ed25519"], keys["nistp256"]
    pub = ed.blob[-32:]
    seed_pub = w.strings(ed.private_wire)[2]
    other = w.ed25519_key()
    point = w.strings(p256.private_wire)[2]
    d_field = p256.private_wire[4 + 19 + 4 + 8 + 4 + len(point) :]
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    return [
        (
            "ed25519 public key of another key",
            w.string("ssh-ed25519") + w.string(w.strings(other.blob)[1]) + w.string(seed_pub),
        ),
        (
            "ed25519 short public key",
            w.string("ssh-ed25519") + w.string(pub[:31]) + w.string(seed_pub),
        ),
        (
            "ed25519 short private key",
            w.string("ssh-ed25519") + w.string(pub) + w.string(seed_pub[:63]),
        ),
        (
            "ecdsa curve name mismatch",
            w.string("ecdsa-sha2-nistp256") + w.string("nistp384") + w.string(point) + d_field,
        ),
        (
            "ecdsa point off the curve",
            w.string("ecdsa-sha2-nistp256") + w.string("nistp256") + w.string(off_curve) + d_field,
        ),
        (
            "ecdsa private scalar 0",
            w.string("ecdsa-sha2-nistp256") + w.string("nistp256") + w.string(point) + w.mpint(0),
        ),
        ("rsa 768 bits", w.rsa_key_unchecked(768).private_wire),
    ]


def test_invalid_private_keys_are_refused(pair: Agents, keys: dict[str, WireKey]) -> None:
    with pair.connect() as c:
        answers = {}
        for what, wire in _bad_keys(keys):
            answers[what] = c.both(bytes((w.ADD_IDENTITY,)) + wire + w.string("bad"))
            c.both(w.REMOVE_ALL_MSG)
    # Documented deviation: OpenSSH 9.2 takes an Ed25519 key whose public half is
    # another key's (its listing then names a key it cannot sign for); we refuse it.
    mismatched = answers.pop("ed25519 public key of another key")
    assert mismatched[0] == FAIL and mismatched[1] in (OK, FAIL)
    differ = {what: a for what, a in answers.items() if a != (FAIL, FAIL)}
    assert not differ, differ


def test_rsa_1024_is_the_smallest_accepted(pair: Agents) -> None:
    key = w.rsa_key_unchecked(1024)
    with pair.connect() as c:
        assert c.same(key.add("rsa1024"), "add RSA-1024") == OK
        assert c.same(key.sign(b"d", w.SIGN_RSA_SHA2_256), "sign").signature.startswith("valid:")


def test_comments_as_bytes(pair: Agents, keys: dict[str, WireKey]) -> None:
    key = keys["ed25519"]
    with pair.connect() as c:
        for comment in (b"\xff\xfe not utf-8", "ünïcode ✓".encode(), b"x" * 4000, b""):
            payload = bytes((w.ADD_IDENTITY,)) + key.private_wire + w.string(comment)
            assert c.same(payload, f"add with comment {comment[:12]!r}") == OK
            got = c.same(w.LIST, "list")
            assert got.identities == ((key.blob, comment),)
        # OpenSSH reads comments (and hop names) as C strings: a NUL byte is malformed
        payload = bytes((w.ADD_IDENTITY,)) + key.private_wire + w.string(b"a\x00b")
        assert c.same(payload, "comment with a NUL byte") == FAIL
        host = keys["ed25519"].blob
        for user, hostname in (("a\x00b", "h"), ("", "h\x00x")):
            dest = w.restrict_destination((w.hop(), w.hop(user, hostname, keys=(host,))))
            assert c.same(key.add("d", dest), f"hop {user!r}@{hostname!r}") == FAIL


def test_pipelined_and_split_requests(pair: Agents, keys: dict[str, WireKey]) -> None:
    key = keys["nistp521"]
    msgs = [key.add("p"), w.LIST, key.sign(b"x" * 100_000, 0), bytes((99,)), w.LIST, key.remove()]
    data = b"".join(w.u32(len(m)) + m for m in msgs)
    with pair.connect() as c:
        for client in (c.ours, c.theirs):
            client.send_raw(data)
        for m in msgs:
            blob, signed = (key.blob, b"x" * 100_000) if m[0] == w.SIGN_REQUEST else (b"", b"")
            ours, theirs = (cl.read_reply(signed, blob) for cl in (c.ours, c.theirs))
            assert ours == theirs, f"pipelined {m[:1].hex()}: {ours} / {theirs}"
    with pair.connect() as c:
        frame = w.u32(len(msgs[0])) + msgs[0]
        for i in range(len(frame)):
            for client in (c.ours, c.theirs):
                client.send_raw(frame[i : i + 1])
        assert (c.ours.read_reply(), c.theirs.read_reply()) == (OK, OK)


def _certified(tmp: Path, key: WireKey, name: str) -> WireKey:
    """``key`` certified by a fresh CA (real ssh-keygen), as ``ssh-add`` sends a cert."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    require_tool("ssh-keygen")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / f"{name}-ca")])
    pub = tmp / f"{name}.pub"
    public = key.private.public_key()  # type: ignore[attr-defined]
    pub.write_bytes(public.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH))
    run(["ssh-keygen", "-q", "-s", str(tmp / f"{name}-ca"), "-I", name, "-n", "u", str(pub)])
    cert = base64.b64decode((tmp / f"{name}-cert.pub").read_text().split()[1])
    cert_type = w.strings(cert)[0]
    fields = w.strings(key.private_wire)
    if key.name == "ed25519":  # cert, then the public and private halves
        rest = w.string(fields[1]) + w.string(fields[2])
    else:  # ECDSA: cert, then the private scalar (what follows the point)
        rest = key.private_wire[
            len(w.string(fields[0]) + w.string(fields[1]) + w.string(fields[2])) :
        ]
    return WireKey(
        f"{key.name}-cert", w.string(cert_type) + w.string(cert) + rest, cert, key.private
    )


def test_certificates_next_to_their_plain_keys(
    pair: Agents, keys: dict[str, WireKey], tmp_path: Path
) -> None:
    """What ``ssh-add`` does with a key and its ``-cert.pub``: both are listed; a
    request naming the plain key also reaches the certified one (OpenSSH matches a
    plain public key against a certificate's key)."""
    for plain in (keys["ed25519"], keys["nistp256"]):
        cert = _certified(tmp_path, plain, plain.name)
        with pair.connect() as c:
            assert c.same(plain.add("plain"), "add plain") == OK
            assert c.same(cert.add("cert"), "add cert") == OK
            assert c.same(w.LIST, "list") == listing((plain, "plain"), (cert, "cert"))
            assert c.same(cert.sign(b"d"), "sign with the cert").kind == "SIGN_RESPONSE"
            assert c.same(cert.remove(), "remove the cert") == OK
            assert c.same(w.LIST, "list") == listing((plain, "plain"))
            assert c.same(plain.remove(), "remove plain") == OK
            assert c.same(cert.add("cert only"), "add the cert alone") == OK
            c.same(plain.sign(b"d"), "sign naming the plain key, only the cert held")
            c.same(plain.add("plain after cert"), "add plain after the cert")
            c.same(w.LIST, "list")
            c.same(plain.remove(), "remove naming the plain key")
            c.same(w.LIST, "list")
            c.same(w.REMOVE_ALL_MSG, "clean")


def test_dsa_and_extreme_lifetimes(pair: Agents, keys: dict[str, WireKey]) -> None:
    from cryptography.hazmat.primitives.asymmetric import dsa

    k = dsa.generate_private_key(1024)
    n = k.private_numbers()
    p = n.public_numbers.parameter_numbers
    blob = (
        w.string("ssh-dss")
        + w.mpint(p.p)
        + w.mpint(p.q)
        + w.mpint(p.g)
        + w.mpint(n.public_numbers.y)
    )
    wire = blob + w.mpint(n.x)  # the private key: the public fields, then x
    dss = WireKey("dsa", wire, blob, k)
    key = keys["ed25519"]
    with pair.connect() as c:
        # Documented deviation: no DSA (OpenSSH 10.0 removed it; 9.2 still takes it).
        ours, theirs = c.both(dss.add("dsa"))
        assert ours == FAIL and theirs in (OK, FAIL)
        assert c.ours.request(w.LIST) == EMPTY
        c.theirs.request(dss.remove())
        assert c.same(key.add("max", w.lifetime(0xFFFFFFFF)), "lifetime 2^32-1") == OK
        assert c.same(key.sign(b"d"), "sign").signature == "valid:ssh-ed25519"


def test_session_bind_field_edges(pair: Agents, keys: dict[str, WireKey]) -> None:
    host = w.ed25519_key()
    sid = b"\x33" * 32
    sig = host.ssh_signature(sid)
    body = w.string(host.blob) + w.string(sid) + w.string(sig)
    with pair.connect() as c:  # a forwarding flag other than 0/1 counts as forwarding
        assert c.same(w.extension("session-bind@openssh.com", body + b"\x02"), "fwd=2") == OK
        assert c.same(w.extension("session-bind@openssh.com", body + b"\x01"), "again") == OK
    with pair.connect() as c:
        assert c.same(w.extension("session-bind@openssh.com", body), "no flag") == FAIL
        assert c.same(w.extension(""), "empty extension name") == FAIL
    with pair.connect() as c:  # an ECDSA host key
        ec_host = keys["nistp384"]
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s_ = decode_dss_signature(ec_host.private.sign(sid, ec.ECDSA(hashes.SHA384())))  # type: ignore[attr-defined]
        ec_sig = w.string("ecdsa-sha2-nistp384") + w.string(w.mpint(r) + w.mpint(s_))
        bind = w.string(ec_host.blob) + w.string(sid) + w.string(ec_sig) + b"\x00"
        assert c.same(w.extension("session-bind@openssh.com", bind), "ECDSA host key") == OK


def test_lifetime_runs_out(pair: Agents, keys: dict[str, WireKey]) -> None:
    """No timing asserted: both agents must have dropped the key some time after 1 s."""
    key, other = keys["ed25519"], keys["nistp256"]
    with pair.connect() as c:
        c.same(key.add("short", w.lifetime(1)), "add with lifetime 1")
        c.same(other.add("long", w.lifetime(3600)), "add with lifetime 3600")
        assert wait_until(lambda: c.both(w.LIST) == (listing((other, "long")),) * 2, timeout=60), (
            c.log[-2:]
        )
        assert c.same(key.sign(b"d"), "sign after expiry") == FAIL


def test_seeded_destination_chains_match_openssh(pair: Agents) -> None:
    """Random destination constraints against random chains of session-binds: what
    each connection lists and which userauth requests sign must match OpenSSH."""
    rng = random.Random(RANDOM_SEED)
    hosts = [w.ed25519_key() for _ in range(4)]
    pool = [w.ed25519_key(), w.ecdsa_key("nistp256"), w.ed25519_key()]
    outcomes: dict[str, int] = {}
    for rnd in range(16):
        with pair.connect() as c:
            for i, key in enumerate(pool):
                pairs = []
                for _ in range(rng.randrange(1, 4)):
                    src = rng.choice([None, None, None, *range(len(hosts))])
                    dst = rng.randrange(len(hosts))
                    user = rng.choice(["", "", "alice", "a*"])
                    from_hop = w.hop() if src is None else w.hop("", f"h{src}", (hosts[src].blob,))
                    pairs.append((from_hop, w.hop(user, f"h{dst}", (hosts[dst].blob,))))
                c.same(key.add(f"k{i}", w.restrict_destination(*pairs)), f"round {rnd} add")
            c.same(w.LIST, f"round {rnd} list on a local connection")
        for _conn in range(4):
            with pair.connect() as c:
                chain = [rng.randrange(len(hosts)) for _ in range(rng.choice([1, 1, 2, 3]))]
                sids = [rng.randbytes(32) for _ in chain]
                for j, (h, sid) in enumerate(zip(chain, sids, strict=True)):
                    last = j == len(chain) - 1
                    forwarding = not last or rng.random() < 0.15
                    c.same(w.session_bind(hosts[h], sid, forwarding), f"round {rnd} bind")
                c.same(w.LIST, f"round {rnd} list after binds {chain}")
                for key in pool:
                    user = rng.choice(["alice", "alice", "bob", "ann"])
                    host = hosts[chain[-1]]
                    data = w.userauth_request(sids[-1], user, key, host)
                    if rng.random() < 0.2:  # plain "publickey": no host key in the request
                        data = data.replace(
                            w.string("publickey-hostbound-v00@openssh.com"), w.string("publickey")
                        )[: -len(w.string(host.blob))]
                    got = c.same(key.sign(data), f"round {rnd} sign as {user} after {chain}")
                    outcomes[got.kind] = outcomes.get(got.kind, 0) + 1
        with pair.connect() as c:
            c.same(w.REMOVE_ALL_MSG, "clean")
    # the mix reached both verdicts
    print(f"destination chains: {outcomes}")
    assert outcomes.get("SIGN_RESPONSE", 0) >= 3 and outcomes.get("FAILURE", 0) >= 3, outcomes


def test_destination_user_pattern_length_is_capped(pair: Agents, keys: dict[str, WireKey]) -> None:
    """OpenSSH 10.5 (10f66b2a): user patterns over 256 bytes are refused (wildcard-heavy
    patterns made matching a CPU sink); 9.2 still takes them."""
    key, host = keys["ed25519"], keys["nistp256"]
    with pair.connect() as c:
        for n, expect_ours in ((256, OK), (257, FAIL)):
            user = "a*" * (n // 2) + "b" * (n % 2)
            dest = w.restrict_destination((w.hop(), w.hop(user, "h", keys=(host.blob,))))
            ours, theirs = c.both(key.add("d", dest))
            assert ours == expect_ours, (n, ours)
            assert theirs in (OK, FAIL)


def test_pkcs11_module_is_never_added_over_a_bound_connection(tmp_path: Path) -> None:
    """OpenSSH 9.4 (1f2731f5, after CVE-2023-38408): a connection that tried a
    session-bind is remote, and loads no PKCS#11 module even from the allow-list.
    A direct connection adds the same module, as OpenSSH's agent does."""
    import softhsm

    softhsm.require_softhsm()
    hsm = softhsm.SoftHsm.create(tmp_path / "hsm")
    token = hsm.init_token("conform", pin="1234")
    token.generate("EC:prime256v1", key_id="01", label="ec")  # 9.2: no PKCS#11 Ed25519
    with both_agents(tmp_path, hsm.env) as agents:
        add = bytes((w.ADD_SMARTCARD,)) + w.string(hsm.module) + w.string(token.pin)
        host = w.ed25519_key()
        for bind in (
            w.session_bind(host, b"\x01" * 32, True),  # forwarded
            w.session_bind(host, b"\x02" * 32, False),  # bound for authentication
            w.session_bind(host, b"\x03" * 32, True, bad=True),  # a bind was attempted
        ):
            with agents.connect() as c:
                c.both(bind)
                ours_reply, theirs_reply = c.both(add)
                assert ours_reply == FAIL, "module added over a session-bound connection"
                assert theirs_reply in (OK, FAIL)  # OK: OpenSSH before 9.4
                c.both(bytes((w.REMOVE_SMARTCARD,)) + w.string(hsm.module) + w.string(""))
        with agents.connect() as c:
            assert c.same(add, "add the module on a direct connection") == OK
            listed = c.same(w.LIST, "token keys listed")
            assert len(listed.identities) == 1
            remove = bytes((w.REMOVE_SMARTCARD,)) + w.string(hsm.module) + w.string("")
            assert c.same(remove, "remove the module") == OK


def test_bound_connection_cannot_remove_or_replace_a_key_it_may_not_use(
    pair: Agents, keys: dict[str, WireKey]
) -> None:
    """OpenSSH's process_remove_identity and process_add_identity: a key the
    connection's bindings do not permit is "not visible": it can be neither removed
    nor re-added (re-constrained) there. ssh-add -D still clears everything."""
    key, host_b, host_c = keys["nistp256"], w.ed25519_key(), w.ed25519_key()
    with pair.connect() as c:
        dest = w.restrict_destination((w.hop(), w.hop(hostname="c", keys=(host_c.blob,))))
        assert c.same(key.add("only-to-c", dest), "add") == OK
    with pair.connect() as c:  # forwarded to B: the key is not usable beyond B
        assert c.same(w.session_bind(host_b, b"\x0b" * 32, True), "bind A->B fwd") == OK
        assert c.same(key.remove(), "remove from B") == FAIL
        assert c.same(key.add("taken over"), "re-add from B without constraints") == FAIL
    with pair.connect() as c:  # a failed bind: not local either
        c.same(w.session_bind(host_b, b"\x0c" * 32, True, bad=True), "bad bind")
        ours, theirs = c.both(key.remove())
        assert ours == FAIL  # OpenSSH 9.6+; 9.2 still treats the connection as local
        if theirs == OK:
            assert c.theirs.request(key.add("only-to-c", dest)) == OK
    with pair.connect() as c:
        assert c.same(w.LIST, "still there") == listing((key, "only-to-c"))
        assert c.same(w.session_bind(host_c, b"\x0d" * 32, False), "bind A->C") == OK
        assert c.same(key.remove(), "remove where it is usable") == OK
