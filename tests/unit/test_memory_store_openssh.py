"""The memory store keeps OpenSSH's ssh-agent semantics for re-adds and lifetimes
(found by tests/integration/test_openssh_conformance.py; these pin them cheaply)."""

from __future__ import annotations

import anyio
from cryptography.hazmat.primitives.asymmetric import ed25519

from secretivex.keys import SoftwareKey
from secretivex.stores.memory import MemoryStore


def new_key(comment: str) -> SoftwareKey:
    return SoftwareKey(ed25519.Ed25519PrivateKey.generate(), comment)


def test_re_add_replaces_in_place_and_keeps_the_byte_budget() -> None:
    store = MemoryStore()
    a, b, c = new_key("a"), new_key("b"), new_key("c")
    for key, comment in ((a, "a"), (b, "b"), (c, "c")):
        store.add(key, comment)
    before = store.health().detail["bytes"]
    store.add(b, "b, renamed")
    listing = anyio.run(store.identities)
    assert [i.comment for i in listing] == ["a", "b, renamed", "c"]
    assert store.health().detail["bytes"] == before + len(", renamed")


def test_lifetime_zero_has_already_run_out() -> None:
    store = MemoryStore()
    key, other = new_key("zero"), new_key("none")
    store.add(other, "none", lifetime_s=None)
    store.add(key, "zero", lifetime_s=0, lapses=True)
    assert [i.comment for i in anyio.run(store.identities)] == ["none"]
    assert key.public_blob in store.lapsed
