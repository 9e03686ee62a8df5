"""The dispatcher in memory: a ``Dispatcher`` over a memory store and a connection
context (``ListenerSpec`` + ``PeerCredentials``, no socket), one test per deny path.

Each test sends real wire payloads through ``Dispatcher.handle`` and checks three things:
the reply is SSH_AGENT_FAILURE, the metrics count the outcome code, and the audit log
(a real file) records it with the key's fingerprint. A positive control in each test
shows the same request succeeding when the one reason to deny is absent, so the deny
is the rule under test and not something else. Outcome codes are compared as strings
(the dispatcher's codes may be a ``StrEnum``, which equals its value).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from secretivex import protocol
from secretivex.agent.audit import AuditLog
from secretivex.agent.dispatcher import ConnectionContext, Dispatcher, Limits
from secretivex.agent.listeners import ListenerSpec
from secretivex.config.matchers import parse_matcher
from secretivex.keys import SoftwareKey
from secretivex.metrics import MetricsRecorder
from secretivex.policy.engine import Policy
from secretivex.policy.peer import PeerCredentials
from secretivex.stores.base import fingerprint_sha256
from secretivex.stores.registry import StoreRegistry

FAILURE = protocol.FAILURE_FRAME


@dataclass
class Rig:
    dispatcher: Dispatcher
    metrics: MetricsRecorder
    audit_path: Path
    keys: dict[str, SoftwareKey]

    def records(self) -> list[dict[str, object]]:
        text = self.audit_path.read_text() if self.audit_path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def count(self, kind: str, outcome: str) -> int:
        return self.metrics.requests.get(kind, {}).get(outcome, 0)


def new_key(comment: str) -> SoftwareKey:
    return SoftwareKey(ed25519.Ed25519PrivateKey.generate(), comment)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield build(tmp_path)


def build(tmp_path: Path, policy: Policy | None = None, *, constrained: bool = False) -> Rig:
    registry = StoreRegistry()
    keys = {name: new_key(name) for name in ("ci-deploy", "personal", "prod-root")}
    for name, key in keys.items():
        registry.memory.add(key, name)
    if constrained:
        hop = protocol.Hop(hostname="build.example", keys=(protocol.HopKey(b"\0" * 51),))
        only_there = protocol.DestinationConstraints(
            (protocol.DestinationConstraint(protocol.Hop(), hop),)
        )
        keys["bound"] = new_key("bound")
        registry.memory.add(keys["bound"], "bound", constraints=(only_there,))
    metrics = MetricsRecorder()
    tmp_path.mkdir(parents=True, exist_ok=True)
    audit_path = tmp_path / "audit.jsonl"
    dispatcher = Dispatcher(
        registry,
        policy or Policy(),
        Limits(4, 5000),
        metrics=metrics,
        audit=AuditLog(str(audit_path)),
    )
    return Rig(dispatcher, metrics, audit_path, keys)


def context(
    *, keys: Sequence[str] = (), peer_uids: frozenset[int] = frozenset(), name: str = "agent"
) -> ConnectionContext:
    """A connection as the listener loop would make it, without the socket."""
    spec = ListenerSpec(
        name=name,
        path=Path(f"/nonexistent/{name}.sock"),
        keys=tuple(parse_matcher(k) for k in keys),
        peer_uids=peer_uids,
    )
    return ConnectionContext(spec, PeerCredentials(os.getpid(), os.getuid(), os.getgid()), 1)


def sign_payload(key: SoftwareKey, data: bytes = b"data to sign") -> bytes:
    return protocol.encode_request(protocol.SignRequest(key.public_blob, data, 0))


async def handle(rig: Rig, ctx: ConnectionContext, payload: bytes) -> bytes:
    with anyio.fail_after(30):
        return await rig.dispatcher.handle(ctx, payload)


def assert_denied(rig: Rig, reply: bytes, kind: str, outcome: str, key: SoftwareKey) -> None:
    assert reply == FAILURE
    assert rig.count(kind, outcome) == 1
    last = rig.records()[-1]
    assert (last["request"], last["outcome"]) == (kind, outcome)
    assert last["key"] == fingerprint_sha256(key.public_blob)


def signed(reply: bytes) -> bool:
    return isinstance(protocol.parse_response(reply[4:]), protocol.SignResponse)


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_scope_denied_outside_the_listener_scope(rig: Rig) -> None:
    ctx = context(keys=["comment:ci-*"], name="ci")
    assert signed(await handle(rig, ctx, sign_payload(rig.keys["ci-deploy"])))
    reply = await handle(rig, ctx, sign_payload(rig.keys["personal"]))
    assert_denied(rig, reply, "sign", "scope_denied", rig.keys["personal"])
    # the scoped socket does not even list it
    listing = protocol.parse_response((await handle(rig, ctx, b"\x0b"))[4:])
    assert isinstance(listing, protocol.IdentitiesAnswer)
    assert [comment for _, comment in listing.identities] == ["ci-deploy"]


async def test_peer_denied_by_the_listener(rig: Rig) -> None:
    """The peer check runs before any request (connection loop); what it decides is the
    listener's ``admits``: ``peers`` narrows to the listed uids, plus the agent's uid and
    root. The connection loop then records ``peer_denied`` (in audit and metrics) the
    way the listener decides here."""
    ctx = context(peer_uids=frozenset({4242}), name="team")
    stranger = PeerCredentials(os.getpid(), 31337, 31337)
    member = PeerCredentials(os.getpid(), 4242, 31337)
    assert not ctx.listener.admits(stranger)
    assert ctx.listener.admits(member)
    assert ctx.listener.admits(PeerCredentials(os.getpid(), os.getuid(), os.getgid()))
    # An admitted peer is served as usual through the same listener.
    assert signed(await handle(rig, ctx, sign_payload(rig.keys["personal"])))


async def test_policy_denied_by_deny_rule(tmp_path: Path) -> None:
    rig = build(tmp_path, Policy(deny=[parse_matcher("comment:prod-*")]))
    ctx = context()
    assert signed(await handle(rig, ctx, sign_payload(rig.keys["personal"])))
    reply = await handle(rig, ctx, sign_payload(rig.keys["prod-root"]))
    assert_denied(rig, reply, "sign", "policy_denied", rig.keys["prod-root"])


async def test_policy_denied_outside_allow_list(tmp_path: Path) -> None:
    rig = build(tmp_path, Policy(allow=[parse_matcher("comment:ci-*")]))
    ctx = context()
    assert signed(await handle(rig, ctx, sign_payload(rig.keys["ci-deploy"])))
    reply = await handle(rig, ctx, sign_payload(rig.keys["personal"]))
    assert_denied(rig, reply, "sign", "policy_denied", rig.keys["personal"])


async def test_destination_denied_on_an_unbound_connection(tmp_path: Path) -> None:
    rig = build(tmp_path, constrained=True)
    ctx = context()
    assert signed(await handle(rig, ctx, sign_payload(rig.keys["personal"])))
    reply = await handle(rig, ctx, sign_payload(rig.keys["bound"]))
    assert_denied(rig, reply, "sign", "destination_denied", rig.keys["bound"])
    assert "unbound connection" in str(rig.records()[-1]["detail"])


async def test_locked_agent_refuses_sign_until_unlocked(rig: Rig) -> None:
    ctx = context()
    lock = protocol.encode_request(protocol.Lock(b"hunter2"))
    unlock = protocol.encode_request(protocol.Unlock(b"hunter2"))
    assert await handle(rig, ctx, lock) == protocol.SUCCESS_FRAME
    reply = await handle(rig, ctx, sign_payload(rig.keys["personal"]))
    assert reply == FAILURE
    assert rig.count("sign", "locked") == 1
    assert rig.records()[-1]["outcome"] == "locked"
    # a locked agent lists nothing, and a wrong passphrase does not unlock it
    listing = protocol.parse_response((await handle(rig, ctx, b"\x0b"))[4:])
    assert isinstance(listing, protocol.IdentitiesAnswer) and not listing.identities
    wrong = protocol.encode_request(protocol.Unlock(b"wrong"))
    assert await handle(rig, ctx, wrong) == FAILURE
    assert rig.count("unlock", "bad_passphrase") == 1
    assert await handle(rig, ctx, unlock) == protocol.SUCCESS_FRAME
    assert signed(await handle(rig, ctx, sign_payload(rig.keys["personal"])))
    assert "hunter2" not in rig.audit_path.read_text()


async def test_confirm_denied_by_the_hook(tmp_path: Path) -> None:
    """A real hook program (no mock): ``false`` denies, ``true`` allows."""
    deny = build(tmp_path / "deny", Policy(confirm_command=["/bin/false"], confirm_keys=[]))
    allow = build(tmp_path / "allow", Policy(confirm_command=["/bin/true"], confirm_keys=[]))
    ctx = context()
    assert signed(await handle(allow, ctx, sign_payload(allow.keys["personal"])))
    assert allow.metrics.confirm.get("allow") == 1
    reply = await handle(deny, ctx, sign_payload(deny.keys["personal"]))
    assert_denied(deny, reply, "sign", "confirm_denied", deny.keys["personal"])
    assert deny.metrics.confirm.get("deny") == 1


async def test_confirm_error_without_any_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``ssh-add -c`` key with no hook and no SSH_ASKPASS cannot be confirmed: denied
    with the reason, never signed."""
    monkeypatch.delenv("SSH_ASKPASS", raising=False)
    rig = build(tmp_path)
    key = new_key("needs-yes")
    rig.dispatcher.registry.memory.add(key, "needs-yes", confirm=True)
    reply = await handle(rig, context(), sign_payload(key))
    assert_denied(rig, reply, "sign", "confirm_error", key)
    assert "SSH_ASKPASS unset" in str(rig.records()[-1]["detail"])


@pytest.mark.parametrize("path", ["scope", "policy", "destination", "lock", "confirm"])
async def test_no_deny_path_signs(tmp_path: Path, path: str) -> None:
    """Across every deny path: no signature frame ever comes back, and the ok counter
    stays at zero."""
    policy = {
        "policy": Policy(deny=[parse_matcher("comment:personal")]),
        "confirm": Policy(confirm_command=["/bin/false"], confirm_keys=[]),
    }.get(path)
    rig = build(tmp_path, policy, constrained=path == "destination")
    key = rig.keys["bound" if path == "destination" else "personal"]
    ctx = context(keys=["comment:ci-*"] if path == "scope" else ())
    if path == "lock":
        await handle(rig, ctx, protocol.encode_request(protocol.Lock(b"pw")))
    reply = await handle(rig, ctx, sign_payload(key))
    assert reply == FAILURE and rig.count("sign", "ok") == 0
