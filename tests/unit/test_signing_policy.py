"""Which software keys sign on the event loop and which in the pool (keys/signing.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secretivex.agent.dispatcher import Limits
from secretivex.keys import signing
from secretivex.keys.software import SoftwareKey


@pytest.mark.parametrize(
    ("make", "inline"),
    [
        (lambda: ed25519.Ed25519PrivateKey.generate(), True),
        (lambda: ec.generate_private_key(ec.SECP256R1()), True),
        (lambda: ec.generate_private_key(ec.SECP384R1()), False),
        (lambda: ec.generate_private_key(ec.SECP521R1()), False),
        (lambda: rsa.generate_private_key(65537, 2048), False),
    ],
    ids=["ed25519", "p256", "p384", "p521", "rsa2048"],
)
def test_fast_algorithms_sign_inline_and_slow_ones_in_the_pool(make, inline: bool) -> None:  # type: ignore[no-untyped-def]
    key = SoftwareKey(make(), "k")
    assert signing.signs_inline(key) is inline
    assert key.sign(b"data", 0)  # and the key signs either way


def test_a_keys_own_veto_always_wins() -> None:
    key = SoftwareKey(ed25519.Ed25519PrivateKey.generate(), "k")
    key.sign_inline = False  # what sec-b sets for ssh-added RSA and RSA > 4096 bits
    assert signing.signs_inline(key) is False


def test_one_pool_sized_to_the_cpus() -> None:
    assert signing.pool_size() >= 1
    limits = Limits(max_signers=64, sign_timeout_ms=0)
    assert limits.sign_threads.total_tokens == signing.pool_size()


def test_the_ceiling_table_and_the_agent_agree() -> None:
    assert not signing.signs_in_pool_by_name("ed25519")
    assert not signing.signs_in_pool_by_name("ecdsa-p256")
    for name in ("ecdsa-p384", "ecdsa-p521", "rsa-2048", "rsa-3072", "rsa-4096"):
        assert signing.signs_in_pool_by_name(name)
