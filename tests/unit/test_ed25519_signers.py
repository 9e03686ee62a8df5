"""Ed25519 signs through libsodium (PyNaCl) when it is installed, else OpenSSL
(cryptography): Ed25519 is deterministic, so both must give the same bytes, and the
agent's answer must verify with the public key either way."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from secretivex.keys import software
from secretivex.keys.software import SoftwareKey

PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x40"


def test_pynacl_is_installed_with_the_package() -> None:
    """A core dependency: without it every Ed25519 signature takes the slower path."""
    import nacl.bindings  # noqa: F401

    assert software._sodium_available()


@settings(max_examples=200, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), data=st.binary(max_size=4096))
def test_libsodium_and_openssl_sign_the_same_bytes(seed: bytes, data: bytes) -> None:
    private = Ed25519PrivateKey.from_private_bytes(seed)
    blob = SoftwareKey(private, "k").sign(data)
    assert blob == PREFIX + private.sign(data)
    private.public_key().verify(blob[len(PREFIX) :], data)


def test_without_pynacl_openssl_signs(monkeypatch: pytest.MonkeyPatch) -> None:
    private = Ed25519PrivateKey.generate()
    monkeypatch.setattr(software, "_SODIUM", False)
    key = SoftwareKey(private, "k")
    assert key.sign(b"data") == PREFIX + private.sign(b"data")
