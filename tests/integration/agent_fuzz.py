"""A seeded, stateful fuzzer for ONE real ``secretivex agent`` process.

It drives the agent through interleaved valid and hostile messages on several
connections and, after every step, checks an independent model of what the agent
must hold:

- the listing on a fresh connection (and on a pooled one) matches the model;
- every signature the agent returns verifies with ``cryptography`` against the key
  the model added (never with the agent's own code);
- the agent answers a fresh connection; at the end, its log has no traceback.

Requests are built with the protocol codec (``secretivex.protocol``); the checks use
only ``cryptography`` and a few lines of wire parsing written here.

The model keeps to behaviour that other work on the agent does not change: keys are
added through the main socket only, far fewer than any memory bound (at most
``len(POOL)`` keys), no scoped listeners, no forwarding session-binds. Lifetimes are
modelled with both ends of the add's round trip: a key is certainly present before
``sent + lifetime``, certainly gone after ``answered + lifetime``, and either in
between (then a listing may show it or not, and a signature may succeed or fail).

Run short by ``tests/integration/test_agent_fuzz.py`` (fixed seed, a few hundred
steps) and long by ``make fuzz`` (``FUZZ_STEPS``, ``FUZZ_SEED``).
"""

from __future__ import annotations

import collections
import contextlib
import fnmatch
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from harness import AgentProcess, start_agent

from secretivex import protocol
from secretivex.protocol import (
    AddIdentity,
    AddSmartcardKey,
    Constraints,
    DestinationConstraint,
    DestinationConstraints,
    Extension,
    Hop,
    HopKey,
    Lock,
    RemoveAllIdentities,
    RemoveIdentity,
    RequestIdentities,
    SessionBind,
    SignRequest,
    Unlock,
    WirePrivateKey,
)

FAILURE = 5
SUCCESS = 6
IDENTITIES_ANSWER = 12
SIGN_RESPONSE = 14
EXTENSION_RESPONSE = 29
REPLY_TIMEOUT_S = 20.0
EPS = 0.05  # slack around lifetime edges (same CLOCK_MONOTONIC on both sides)

# ------------------------------------------------------------------ tiny wire helpers


def s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def mp(value: int) -> bytes:
    if value == 0:
        return s(b"")
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return s(raw)


def read_strings(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
        if pos > len(data):
            raise AssertionError(f"truncated string in {data!r}")
    return out


# ------------------------------------------------------------------------- key pool


@dataclass
class PoolKey:
    """A private key made by ``cryptography``; its wire form and public blob are ours."""

    name: str
    private: Any
    key_type: str
    blob: bytes
    wire: WirePrivateKey

    def verify(self, data: bytes, flags: int, signature: bytes) -> None:
        """Raise unless ``signature`` (an SSH signature blob) is valid for ``data``."""
        alg, raw = read_strings(signature)
        public = self.private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            assert alg == b"ssh-ed25519", alg
            public.verify(raw, data)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            assert alg.decode() == self.key_type, alg
            r_raw, s_raw = read_strings(raw)
            digest = {256: hashes.SHA256(), 384: hashes.SHA384()}[public.curve.key_size]
            der = encode_dss_signature(int.from_bytes(r_raw, "big"), int.from_bytes(s_raw, "big"))
            public.verify(der, data, ec.ECDSA(digest))
        else:
            assert isinstance(public, rsa.RSAPublicKey)
            want, digest = {
                protocol.SSH_AGENT_RSA_SHA2_256: (b"rsa-sha2-256", hashes.SHA256()),
                protocol.SSH_AGENT_RSA_SHA2_512: (b"rsa-sha2-512", hashes.SHA512()),
            }.get(flags, (b"ssh-rsa", hashes.SHA1()))  # flags 0: ssh-rsa, SHA-1
            assert alg == want, (alg, want)
            public.verify(raw, data, padding.PKCS1v15(), digest)


def _pool_key(name: str, private: Any) -> PoolKey:
    line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    key_type, b64 = line.split()[:2]
    import base64

    blob = base64.b64decode(b64)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        seed = private.private_bytes_raw()
        pub = private.public_key().public_bytes_raw()
        fields: tuple[bytes | int, ...] = (pub, seed + pub)
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        point = private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        curve = f"nistp{private.curve.key_size}".encode()
        fields = (curve, point, private.private_numbers().private_value)
    else:
        n = private.private_numbers()
        fields = (n.public_numbers.n, n.public_numbers.e, n.d, n.iqmp, n.p, n.q)
    kt = key_type.decode()
    return PoolKey(name, private, kt, blob, WirePrivateKey(kt, fields))


def make_pool() -> list[PoolKey]:
    """Key material (cryptography draws its own randomness; only choices are seeded)."""
    keys = [_pool_key(f"ed{i}", ed25519.Ed25519PrivateKey.generate()) for i in range(10)]
    keys += [_pool_key(f"p256-{i}", ec.generate_private_key(ec.SECP256R1())) for i in range(4)]
    keys.append(_pool_key("p384", ec.generate_private_key(ec.SECP384R1())))
    keys += [_pool_key(f"rsa{i}", rsa.generate_private_key(65537, 2048)) for i in range(2)]
    return keys


@dataclass
class HostKey:
    private: ed25519.Ed25519PrivateKey
    blob: bytes

    @classmethod
    def make(cls) -> HostKey:
        private = ed25519.Ed25519PrivateKey.generate()
        return cls(private, s(b"ssh-ed25519") + s(private.public_key().public_bytes_raw()))

    def sign(self, data: bytes) -> bytes:
        return s(b"ssh-ed25519") + s(self.private.sign(data))


# --------------------------------------------------------------------------- model


@dataclass
class ModelKey:
    key: PoolKey
    comment: str
    confirm: bool = False
    dest_host: int | None = None  # index into hosts this key may authenticate to
    dest_user: str = ""  # user pattern ("" = any)
    lifetime: int | None = None
    sent: float = 0.0  # monotonic time the add was sent / answered
    answered: float = 0.0

    def state(self, t0: float, t1: float) -> str:
        """'present', 'gone' or 'either' for a request sent at t0 and answered at t1."""
        if self.lifetime is None:
            return "present"
        if t1 < self.sent + self.lifetime - EPS:
            return "present"
        if t0 > self.answered + self.lifetime + EPS:
            return "gone"
        return "either"


@dataclass
class Conn:
    sock: socket.socket
    label: str
    session: tuple[int, bytes] | None = None  # (host index, session id) of the auth bind
    #: A session-bind was tried here (OpenSSH 9.6): with none recorded, this connection
    #: sees no destination-constrained key.
    bind_attempted: bool = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> tuple[int, bytes]:
        head = self._read_exact(4)
        (size,) = struct.unpack(">I", head)
        body = self._read_exact(size)
        return body[0], body[1:]

    def _read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"{self.label}: connection closed after {len(buf)}/{n} bytes")
            buf += chunk
        return bytes(buf)

    def request(self, payload: bytes) -> tuple[int, bytes]:
        self.send(protocol.frame(payload))
        return self.read_reply()

    def wait_closed(self) -> None:
        """The agent closed this connection (EOF, or a reset), within the reply timeout."""
        try:
            data = self.sock.recv(1)
        except ConnectionResetError:
            return
        assert data == b"", f"{self.label}: expected the agent to close, got {data!r}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class FuzzFailure(AssertionError):
    pass


@dataclass
class AgentFuzzer:
    agent: AgentProcess
    allow_file: Path
    file_key: PoolKey
    seed: int
    rng: random.Random = field(init=False)
    pool: list[PoolKey] = field(default_factory=list)
    hosts: list[HostKey] = field(default_factory=list)
    model: dict[bytes, ModelKey] = field(default_factory=dict)
    locked: str | None = None  # the lock passphrase while locked
    confirm_allows: bool = True
    conns: list[Conn] = field(default_factory=list)
    hanging: list[Conn] = field(default_factory=list)
    trace: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    wrong_unlocks: int = 0
    lock_attempts: int = 0
    next_conn: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.pool = make_pool()
        self.hosts = [HostKey.make() for _ in range(2)]
        for _ in range(4):
            self.conns.append(self._connect())
        self._set_confirm(True)

    # -- plumbing -------------------------------------------------------------------

    def _connect(self) -> Conn:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.connect(str(self.agent.socket))
        self.next_conn += 1
        return Conn(sock, f"conn{self.next_conn}")

    def _set_confirm(self, allow: bool) -> None:
        self.confirm_allows = allow
        if allow:
            self.allow_file.touch()
        else:
            self.allow_file.unlink(missing_ok=True)

    def note(self, text: str) -> None:
        self.trace.append(text)

    def fail(self, message: str) -> FuzzFailure:
        steps = "\n  ".join(self.trace)
        return FuzzFailure(
            f"{message}\nseed={self.seed} (rerun: make fuzz FUZZ_SEED={self.seed})\n"
            f"last steps:\n  {steps}\nagent log tail:\n{self.agent.log()[-3000:]}"
        )

    def expect(self, got: tuple[int, bytes], want: int, what: str) -> bytes:
        if got[0] != want:
            raise self.fail(f"{what}: expected reply type {want}, got {got[0]} {got[1][:80]!r}")
        return got[1]

    def conn(self) -> Conn:
        return self.rng.choice(self.conns)

    def timed(self, conn: Conn, payload: bytes) -> tuple[float, float, tuple[int, bytes]]:
        t0 = time.monotonic()
        reply = conn.request(payload)
        return t0, time.monotonic(), reply

    # -- the checks after every step -------------------------------------------------

    def check_listing(self, conn: Conn | None = None) -> None:
        fresh = conn is None
        c = conn or self._connect()
        try:
            t0, t1, reply = self.timed(c, protocol.encode_request(RequestIdentities()))
        finally:
            if fresh:
                c.close()
        body = self.expect(reply, IDENTITIES_ANSWER, f"listing on {c.label}")
        answer = protocol.parse_response(bytes([IDENTITIES_ANSWER]) + body)
        assert isinstance(answer, protocol.IdentitiesAnswer)
        listed = [(bytes(blob), comment) for blob, comment in answer.identities]
        blobs = [b for b, _ in listed]
        if len(set(blobs)) != len(blobs):
            raise self.fail(f"duplicate keys in listing: {listed}")
        if self.locked is not None:
            if listed:
                raise self.fail(f"locked agent listed {len(listed)} keys")
            return
        must: dict[bytes, str] = {self.file_key.blob: "file-key"}
        may: dict[bytes, str] = {}
        for blob, mk in list(self.model.items()):
            state = mk.state(t0, t1)
            if (
                state != "gone"
                and conn is not None
                and mk.dest_host is not None
                and (conn.session is not None or conn.bind_attempted)
                and (conn.session is None or mk.dest_host != conn.session[0])
            ):
                # As OpenSSH: a bound connection lists a destination-constrained key only
                # when its bound host is a permitted destination; one whose binds all
                # failed lists none.
                continue
            if state == "present":
                must[blob] = mk.comment
            elif state == "either":
                may[blob] = mk.comment
            else:
                del self.model[blob]
                self.counts["expired"] += 1
        got = dict(listed)
        missing = {b: c for b, c in must.items() if got.get(b) != c}
        extra = {b: c for b, c in got.items() if b not in must and may.get(b) != c}
        if missing or extra:
            raise self.fail(
                f"listing differs from the model: missing={sorted(missing.values())} "
                f"unexpected={sorted(extra.values())}"
            )

    def check(self) -> None:
        self.check_listing()  # a fresh connection: the agent still accepts and answers
        if self.rng.random() < 0.3:
            self.check_listing(self.conn())
        if self.agent.proc.poll() is not None:
            raise self.fail(f"agent exited with {self.agent.proc.returncode}")

    # -- valid operations ------------------------------------------------------------

    def op_add(self) -> None:
        key = self.rng.choice(self.pool)
        comment = f"{key.name}-{self.rng.randrange(1000)}"
        mk = ModelKey(key, comment)
        extensions: tuple[Any, ...] = ()
        roll = self.rng.random()
        if roll < 0.15:
            mk.lifetime = self.rng.choice([1, 2, 3])
        elif roll < 0.3:
            mk.lifetime = 3600
        if self.rng.random() < 0.3:
            mk.confirm = True
        if self.rng.random() < 0.25:
            mk.dest_host = self.rng.randrange(len(self.hosts))
            mk.dest_user = self.rng.choice(["", "alice", "a*"])
            host = self.hosts[mk.dest_host]
            extensions = (
                DestinationConstraints(
                    (
                        DestinationConstraint(
                            Hop(),
                            Hop(mk.dest_user, f"host{mk.dest_host}", (HopKey(host.blob),)),
                        ),
                    )
                ),
            )
        constraints = Constraints(lifetime=mk.lifetime, confirm=mk.confirm, extensions=extensions)
        payload = protocol.encode_request(AddIdentity(key.wire, comment, constraints))
        c = self.conn()
        t0, t1, reply = self.timed(c, payload)
        mk.sent, mk.answered = t0, t1
        self.note(
            f"add {comment} on {c.label} lifetime={mk.lifetime} confirm={mk.confirm} "
            f"dest={mk.dest_host}/{mk.dest_user!r}"
        )
        if self.locked is not None:
            self.expect(reply, FAILURE, "add while locked")
            return
        old = self.model.get(key.blob)
        if old is not None and self._hidden(c, old):
            # As OpenSSH: a key this connection's binds do not permit is not replaced.
            state = old.state(t0, t1)
            if state == "present":
                self.expect(reply, FAILURE, f"re-add of hidden {old.comment}")
                return
            if state == "either" and reply[0] == FAILURE:
                return
        self.expect(reply, SUCCESS, f"add {comment}")
        self.model[key.blob] = mk  # re-adding replaces comment and constraints

    def op_remove(self) -> None:
        roll = self.rng.random()
        if roll < 0.6 and self.model:
            blob = self.rng.choice(list(self.model))
            what = self.model[blob].comment
        elif roll < 0.8:
            blob, what = self.file_key.blob, "file-key"
        else:
            key = self.rng.choice(self.pool)
            blob, what = key.blob, key.name
        c = self.conn()
        t0, t1, reply = self.timed(c, protocol.encode_request(RemoveIdentity(blob)))
        self.note(f"remove {what} on {c.label}")
        if self.locked is not None or blob == self.file_key.blob:
            self.expect(reply, FAILURE, f"remove {what}")
            return
        mk = self.model.get(blob)
        state = "gone" if mk is None else mk.state(t0, t1)
        if mk is not None and state != "gone" and self._hidden(c, mk):
            # As OpenSSH: a key this connection's binds do not permit is not removed.
            if state == "present":
                self.expect(reply, FAILURE, f"remove hidden {what}")
            if reply[0] == FAILURE:
                return
        if state == "present":
            self.expect(reply, SUCCESS, f"remove {what}")
        elif state == "gone":
            self.expect(reply, FAILURE, f"remove absent {what}")
        elif reply[0] not in (SUCCESS, FAILURE):
            raise self.fail(f"remove {what}: reply {reply[0]}")
        self.model.pop(blob, None)

    @staticmethod
    def _hidden(c: Conn, mk: ModelKey) -> bool:
        """Whether ``c``'s session-binds make destination-constrained ``mk`` invisible."""
        if mk.dest_host is None:
            return False
        if c.session is None:
            return c.bind_attempted
        return mk.dest_host != c.session[0]

    def op_remove_all(self) -> None:
        c = self.conn()
        reply = c.request(protocol.encode_request(RemoveAllIdentities()))
        self.note(f"remove-all on {c.label}")
        if self.locked is not None:
            self.expect(reply, FAILURE, "remove-all while locked")
            return
        self.expect(reply, SUCCESS, "remove-all")
        self.model.clear()

    def _sign_data(self, c: Conn, mk: ModelKey | None, blob: bytes) -> tuple[bytes, bool]:
        """Data to sign and whether a destination-constrained key may sign it here."""
        if mk is None or mk.dest_host is None or self.rng.random() < 0.2:
            data = self.rng.randbytes(self.rng.randrange(0, 300))
            return data, mk is None or mk.dest_host is None
        user = self.rng.choice(["alice", "bob", "al"])
        bound = c.session
        session_id = bound[1] if bound else self.rng.randbytes(32)
        host_index = bound[0] if bound else self.rng.randrange(len(self.hosts))
        wrong_session = self.rng.random() < 0.1
        wrong_host = self.rng.random() < 0.1
        if wrong_session:
            session_id = self.rng.randbytes(32)
        host_blob = self.hosts[(host_index + wrong_host) % len(self.hosts)].blob
        data = (
            s(session_id)
            + b"\x32"
            + s(user.encode())
            + s(b"ssh-connection")
            + s(b"publickey-hostbound-v00@openssh.com")
            + b"\x01"
            + s(mk.key.key_type.encode())
            + s(blob)
            + s(host_blob)
        )
        allowed = (
            bound is not None
            and bound[0] == mk.dest_host
            and not wrong_session
            and not wrong_host
            and (not mk.dest_user or fnmatch.fnmatchcase(user, mk.dest_user))
        )
        return data, allowed

    def op_sign(self) -> None:
        c = self.conn()
        if self.model and self.rng.random() < 0.8:
            blob = self.rng.choice(list(self.model))
            mk: ModelKey | None = self.model[blob]
            key = self.model[blob].key
        elif self.rng.random() < 0.5:
            key, mk, blob = self.file_key, None, self.file_key.blob
        else:
            key = self.rng.choice(self.pool)
            blob, mk = key.blob, None
            if blob in self.model:
                mk = self.model[blob]
        absent = mk is None and blob != self.file_key.blob
        if mk is not None and mk.dest_host is not None and self.rng.random() < 0.7:
            bound = [x for x in self.conns if x.session and x.session[0] == mk.dest_host]
            c = self.rng.choice(bound) if bound else c
        flags = self.rng.choice([0, 0, protocol.SSH_AGENT_RSA_SHA2_256, 4])
        data, dest_ok = self._sign_data(c, mk, blob)
        t0, t1, reply = self.timed(c, protocol.encode_request(SignRequest(blob, data, flags)))
        label = mk.comment if mk else ("file-key" if not absent else f"absent {key.name}")
        self.note(f"sign {label} on {c.label} flags={flags} len={len(data)} dest_ok={dest_ok}")
        state = "gone" if absent else ("present" if mk is None else mk.state(t0, t1))
        if self.locked is not None or state == "gone":
            self.expect(reply, FAILURE, f"sign {label} (locked or absent)")
            return
        should = dest_ok and (mk is None or not mk.confirm or self.confirm_allows)
        if state == "either" and reply[0] == FAILURE:
            return
        if not should:
            self.expect(reply, FAILURE, f"sign {label} (destination or confirm denies)")
            self.counts["sign_refused"] += 1
            return
        body = self.expect(reply, SIGN_RESPONSE, f"sign {label}")
        (signature,) = read_strings(body)
        try:
            key.verify(data, flags, signature)
        except Exception as exc:
            raise self.fail(f"signature by {label} does not verify: {exc!r}") from None
        self.counts["signatures_verified"] += 1
        if mk is not None and mk.dest_host is not None:
            self.counts["destination_signatures_verified"] += 1
        if mk is not None and mk.confirm:
            self.counts["confirmed_signatures_verified"] += 1

    def op_toggle_confirm(self) -> None:
        self._set_confirm(not self.confirm_allows)
        self.note(f"confirm hook now {'allows' if self.confirm_allows else 'denies'}")

    def op_lock(self) -> None:
        c = self.conn()
        phrase = self.rng.choice(["pw", "correct horse", "\u00e9t\u00e9"])
        self.lock_attempts += 1
        if self.lock_attempts % 4 == 0:
            phrase = ""  # every fourth attempt: an empty passphrase, refused as OpenSSH does
        reply = c.request(protocol.encode_request(Lock(phrase.encode())))
        self.note(f"lock {phrase!r} on {c.label}")
        if self.locked is not None or not phrase:
            self.expect(reply, FAILURE, "lock while locked")
            return
        self.expect(reply, SUCCESS, "lock")
        self.locked = phrase

    def op_unlock(self) -> None:
        c = self.conn()
        wrong = self.locked is not None and self.wrong_unlocks < 3 and self.rng.random() < 0.2
        phrase = (self.locked or "pw") + ("x" if wrong else "")
        reply = c.request(protocol.encode_request(Unlock(phrase.encode())))
        self.note(f"unlock {phrase!r} on {c.label}")
        if self.locked is None or wrong:
            self.wrong_unlocks += 1
            self.expect(reply, FAILURE, "unlock (not locked, or wrong passphrase)")
            return
        if reply[0] == FAILURE and self.wrong_unlocks:
            # An unlock failed before: an agent may rate-limit unlock guesses for a while.
            deadline = time.monotonic() + 15
            while reply[0] == FAILURE and time.monotonic() < deadline:
                time.sleep(0.5)
                reply = c.request(protocol.encode_request(Unlock(phrase.encode())))
        self.expect(reply, SUCCESS, "unlock")
        self.locked = None

    def op_session_bind(self) -> None:
        c = self.conn()
        host_index = self.rng.randrange(len(self.hosts))
        host = self.hosts[host_index]
        roll = self.rng.random()
        if c.session is not None and roll < 0.3:
            host_index, session_id = c.session  # the same bind again: idempotent
            host = self.hosts[host_index]
        else:
            session_id = self.rng.randbytes(32)
        bad_signature = roll > 0.85
        signature = host.sign(session_id + (b"x" if bad_signature else b""))
        contents = protocol.encode_session_bind(
            SessionBind(host.blob, session_id, signature, False)
        )
        reply = c.request(protocol.encode_request(Extension(protocol.EXT_SESSION_BIND, contents)))
        self.note(f"session-bind host{host_index} on {c.label} bad_sig={bad_signature}")
        c.bind_attempted = True
        # Processed while locked too (OpenSSH 10.5). A connection bound for
        # authentication takes no further bind, not even the same one (OpenSSH).
        if bad_signature:
            self.expect(reply, FAILURE, "session-bind with a bad signature")
            return
        if c.session is None:
            self.expect(reply, SUCCESS, "first session-bind")
            c.session = (host_index, session_id)
        else:
            self.expect(reply, FAILURE, "second auth session-bind on one connection")

    def op_extension(self) -> None:
        c = self.conn()
        # (the health extension is left out: its contents belong to other work)
        name = self.rng.choice(["query", "no-such-extension@example.com"])
        reply = c.request(protocol.encode_request(Extension(name, b"")))
        self.note(f"extension {name} on {c.label}")
        if self.locked is not None:
            self.expect(reply, FAILURE, f"extension {name} while locked")
        elif name == "query":
            body = self.expect(reply, EXTENSION_RESPONSE, "query")
            names = read_strings(body)
            if names[0] != b"query" or protocol.EXT_SESSION_BIND.encode() not in names[1:]:
                raise self.fail(f"query reply lacks session-bind: {names}")
        else:
            # draft-miller-ssh-agent §3.8: unsupported extension -> SSH_AGENT_FAILURE
            self.expect(reply, FAILURE, f"unknown extension {name}")

    def op_pipelined(self) -> None:
        """Several requests in one write: answered in order."""
        c = self.conn()
        payloads = [protocol.encode_request(RequestIdentities())]
        payloads.append(bytes([self.rng.choice([0, 1, 99, 200])]) + self.rng.randbytes(8))
        payloads.append(protocol.encode_request(Extension("query", b"")))
        c.send(b"".join(protocol.frame(p) for p in payloads))
        self.note(f"pipelined list+garbage+query on {c.label}")
        first = c.read_reply()
        self.expect(first, IDENTITIES_ANSWER, "pipelined listing")
        self.expect(c.read_reply(), FAILURE, "pipelined garbage")
        self.expect(
            c.read_reply(), FAILURE if self.locked is not None else EXTENSION_RESPONSE, "query"
        )

    def op_split_writes(self) -> None:
        """One request written in small pieces, with pauses between them."""
        c = self.conn()
        data = protocol.frame(protocol.encode_request(Extension("query", b"")))
        cuts = sorted(self.rng.sample(range(1, len(data)), min(3, len(data) - 1)))
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            c.send(data[a:b])
            time.sleep(0.002)
        self.note(f"split query in {len(cuts) + 1} writes on {c.label}")
        self.expect(
            c.read_reply(), FAILURE if self.locked is not None else EXTENSION_RESPONSE, "query"
        )

    def op_reconnect(self) -> None:
        i = self.rng.randrange(len(self.conns))
        self.conns[i].close()
        self.conns[i] = self._connect()
        self.note(f"reconnect slot {i} as {self.conns[i].label}")

    # -- hostile operations ----------------------------------------------------------

    def _hostile_payload(self) -> tuple[str, bytes]:
        key = self.rng.choice(self.pool)
        other = self.rng.choice([k for k in self.pool if k is not key])
        choice = self.rng.randrange(9)
        if choice == 0:
            return "unknown type", bytes([self.rng.choice([0, 1, 2, 99, 200, 255])]) + (
                self.rng.randbytes(self.rng.randrange(20))
            )
        if choice == 1:  # truncating a sign request always breaks its trailing u32/strings
            whole = protocol.encode_request(SignRequest(key.blob, b"data", 0))
            return "truncated sign", whole[: self.rng.randrange(1, len(whole))]
        if choice == 2:
            whole = protocol.encode_request(AddIdentity(key.wire, "t"))
            return "truncated add", whole[: self.rng.randrange(1, len(whole))]
        if choice == 3:
            return "trailing bytes", protocol.encode_request(RequestIdentities()) + b"\x00"
        if choice == 4:
            return "maxsign", protocol.encode_request(
                AddIdentity(key.wire, "m", Constraints(maxsign=5))
            )
        if choice == 5:  # an unknown constraint extension: its length is unknowable
            body = protocol.encode_request(AddIdentity(key.wire, "u"))
            return "unknown constraint", bytes([protocol.SSH_AGENTC_ADD_ID_CONSTRAINED]) + body[
                1:
            ] + b"\xff" + s(b"nope@example.com")
        if choice == 6 and key.key_type == "ssh-ed25519" and other.key_type == "ssh-ed25519":
            _pub, priv = key.wire.fields
            mixed = WirePrivateKey("ssh-ed25519", (other.wire.fields[0], priv))
            return "mismatched ed25519", protocol.encode_request(AddIdentity(mixed, "bad"))
        if choice == 7:
            return "smartcard outside allowlist", protocol.encode_request(
                AddSmartcardKey("/nonexistent/fuzz-pkcs11.so", "1234")
            )
        return "bad session-bind", protocol.encode_request(
            Extension(protocol.EXT_SESSION_BIND, self.rng.randbytes(self.rng.randrange(40)))
        )

    def op_hostile_payload(self) -> None:
        """A well-framed message the agent must refuse without changing any state (but a
        failed session-bind, which marks its connection, as OpenSSH)."""
        c = self.conn()
        what, payload = self._hostile_payload()
        reply = c.request(payload)
        self.note(f"hostile {what} on {c.label}")
        if what == "bad session-bind":
            c.bind_attempted = True
        self.expect(reply, FAILURE, f"hostile {what}")
        self.counts["hostile_refused"] += 1

    def op_bad_frame(self) -> None:
        """A frame header no agent accepts: that connection is closed, nothing else."""
        i = self.rng.randrange(len(self.conns))
        c = self.conns[i]
        size = self.rng.choice([0, 256 * 1024 + 1, 0xFFFFFFFF])
        c.send(struct.pack(">I", size) + self.rng.randbytes(self.rng.randrange(4)))
        self.note(f"bad frame length {size} on {c.label}")
        c.wait_closed()
        c.close()
        self.conns[i] = self._connect()

    def op_truncated_frame(self) -> None:
        """A frame cut short: left hanging on its own connection, or abandoned."""
        c = self._connect()
        whole = protocol.frame(protocol.encode_request(SignRequest(self.file_key.blob, b"x", 0)))
        c.send(whole[: self.rng.randrange(1, len(whole))])
        if self.rng.random() < 0.5:
            c.close()
            self.note(f"truncated frame then close on {c.label}")
        else:
            self.hanging.append(c)
            if len(self.hanging) > 3:
                self.hanging.pop(0).close()
            self.note(f"truncated frame left hanging on {c.label}")

    def op_wait(self) -> None:
        """Let short lifetimes run out now and then."""
        pause = self.rng.choice([0.2, 0.5, 1.0])
        time.sleep(pause)
        self.note(f"wait {pause}s")

    # -- the run ---------------------------------------------------------------------

    OPS: tuple[tuple[str, int], ...] = (
        ("op_add", 14),
        ("op_remove", 5),
        ("op_remove_all", 1),
        ("op_sign", 22),
        ("op_toggle_confirm", 2),
        ("op_lock", 2),
        ("op_unlock", 6),
        ("op_session_bind", 6),
        ("op_extension", 3),
        ("op_pipelined", 3),
        ("op_split_writes", 2),
        ("op_reconnect", 3),
        ("op_hostile_payload", 9),
        ("op_bad_frame", 2),
        ("op_truncated_frame", 2),
        ("op_wait", 1),
    )

    def run(self, steps: int) -> collections.Counter[str]:
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        try:
            for _ in range(steps):
                name = self.rng.choices(names, weights)[0]
                op: Callable[[], None] = getattr(self, name)
                try:
                    op()
                except (OSError, EOFError) as exc:
                    raise self.fail(f"{name}: {exc!r}") from None
                self.counts[name] += 1
                self.check()
            if self.locked is not None:
                self.locked_unlock()
            self.check()
        finally:
            for c in self.conns + self.hanging:
                c.close()
        return self.counts

    def locked_unlock(self) -> None:
        c = self._connect()
        try:
            self.expect(
                c.request(protocol.encode_request(Unlock((self.locked or "").encode()))),
                SUCCESS,
                "final unlock",
            )
            self.locked = None
        finally:
            c.close()


def fuzz_agent(tmp: Path, seed: int, steps: int) -> collections.Counter[str]:
    """Start one agent (a file key in ~/.ssh, a confirm hook), fuzz it, stop it."""
    home = tmp / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    file_private = ed25519.Ed25519PrivateKey.generate()
    (home / ".ssh" / "id_ed25519").write_bytes(
        file_private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    pub = file_private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (home / ".ssh" / "id_ed25519.pub").write_bytes(pub + b" file-key\n")
    allow = tmp / "confirm-allows"
    hook = tmp / "confirm-hook"
    hook.write_text(f"#!/bin/sh\nexec test -e '{allow}'\n")
    hook.chmod(0o755)
    config = tmp / "agent.yaml"
    config.write_text(
        "policy:\n"
        "  confirm:\n"
        f"    command: ['{hook}']\n"
        "    timeout_ms: 20000\n"
        "    keys: ['comment:no-configured-key-matches-this']  # only ssh-add -c keys ask\n"
    )
    agent = start_agent(tmp, "--config", str(config))
    try:
        file_key = _pool_key("file-key", file_private)
        fuzzer = AgentFuzzer(agent, allow, file_key, seed)
        counts = fuzzer.run(steps)
        log = agent.log()
        for marker in ("Traceback", "internal error"):
            if marker in log:
                raise fuzzer.fail(f"agent log has {marker!r}")
        return counts
    finally:
        agent.stop()


def seed_from_env(default: int) -> int:
    raw = os.environ.get("SECRETIVEX_FUZZ_SEED", "")
    if raw == "random":
        return random.SystemRandom().randrange(2**32)
    return int(raw) if raw else default
