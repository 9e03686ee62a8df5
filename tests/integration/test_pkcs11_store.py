"""The PKCS#11 store against real SoftHSM2 tokens, checked by independent tools.

Public keys are compared with ``ssh-keygen -D`` (OpenSSH's own PKCS#11 reader) and
``pkcs11-tool --read-object``; signatures are verified with ``cryptography`` directly
and, wrapped as SSHSIG, with ``ssh-keygen -Y verify``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

try:
    from tests.integration.softhsm import SoftHsm, Token, require_tools
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from softhsm import SoftHsm, Token, require_tools  # type: ignore[no-redef]

from secretivex.config.runtime import Pkcs11StoreSettings
from secretivex.stores.base import Identity, KeyStore, SignError, StoreError, StoreState
from secretivex.stores.pkcs11 import (
    DEFAULT_ALLOWLIST,
    WRONG_PIN,
    Pkcs11Store,
    TokenState,
    module_allowed,
    open_smartcard,
    same_module,
)

pytestmark = [pytest.mark.softhsm, pytest.mark.anyio]

#: (pkcs11-tool key type, CKA_ID, label, SSH key type)
KEYS = [
    ("EC:edwards25519", "01", "ed", "ssh-ed25519"),
    ("EC:prime256v1", "02", "p256", "ecdsa-sha2-nistp256"),
    ("EC:secp384r1", "03", "p384", "ecdsa-sha2-nistp384"),
    ("rsa:3072", "04", "rsa", "ssh-rsa"),
    ("EC:secp521r1", "05", "p521", "ecdsa-sha2-nistp521"),
]
#: (label, sign flags, expected signature algorithm)
SIGN_CASES = [
    ("ed", 0, "ssh-ed25519"),
    ("p256", 0, "ecdsa-sha2-nistp256"),
    ("p384", 0, "ecdsa-sha2-nistp384"),
    ("p521", 0, "ecdsa-sha2-nistp521"),
    ("rsa", 0, "ssh-rsa"),
    ("rsa", 2, "rsa-sha2-256"),
    ("rsa", 4, "rsa-sha2-512"),
    ("rsa", 6, "rsa-sha2-256"),  # both bits: OpenSSH picks SHA-256
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def hsm() -> SoftHsm:
    return SoftHsm.shared()


@pytest.fixture(scope="module")
def token(hsm: SoftHsm) -> Token:
    """The main token: every key type, never modified by tests."""
    tok = hsm.init_token()
    for key_type, key_id, label, _ in KEYS:
        tok.generate(key_type, key_id=key_id, label=label)
    return tok


def small_token(hsm: SoftHsm, *, pin: str | None = None) -> Token:
    tok = hsm.init_token(pin=pin) if pin else hsm.init_token()
    tok.generate("EC:edwards25519", key_id="01", label="ed")
    tok.generate("EC:prime256v1", key_id="02", label="p256")
    return tok


class CountingPin:
    def __init__(self, pin: str) -> None:
        self.pin = pin
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.pin


@asynccontextmanager
async def opened(module: str, tok: Token, **kwargs: Any) -> AsyncIterator[Pkcs11Store]:
    kwargs.setdefault("pin", lambda: tok.pin)
    if not {"token_serial", "slot"} & kwargs.keys():
        kwargs.setdefault("token_label", tok.label)
    store = Pkcs11Store(kwargs.pop("name", "hsm"), module, **kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


@asynccontextmanager
async def maintained(store: KeyStore) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(store.maintain)
        yield
        tg.cancel_scope.cancel()


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.05)


def by_comment(identities: Any) -> dict[str, Identity]:
    return {identity.comment: identity for identity in identities}


# --------------------------------------------------------------------------- independent checks


def _read_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (length,) = struct.unpack_from(">I", buf, pos)
    return buf[pos + 4 : pos + 4 + length], pos + 4 + length


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def openssh_blob(public: Any) -> bytes:
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def public_from_blob(blob: bytes) -> Any:
    key_type, _ = _read_string(blob, 0)
    line = key_type + b" " + base64.b64encode(blob)
    return serialization.load_ssh_public_key(line)


def verify_independently(blob: bytes, data: bytes, signature: bytes) -> str:
    """Verify with cryptography only (not secretivex.keys); returns the algorithm."""
    algorithm, pos = _read_string(signature, 0)
    raw, pos = _read_string(signature, pos)
    assert pos == len(signature)
    public = public_from_blob(blob)
    name = algorithm.decode()
    if isinstance(public, ed25519.Ed25519PublicKey):
        assert name == "ssh-ed25519"
        public.verify(raw, data)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        r, p = _read_string(raw, 0)
        s, p = _read_string(raw, p)
        assert p == len(raw)
        hash_type = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}[
            public.curve.key_size
        ]
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        public.verify(der, data, ec.ECDSA(hash_type()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        assert len(raw) == public.key_size // 8
        hash_type = {
            "ssh-rsa": hashes.SHA1,
            "rsa-sha2-256": hashes.SHA256,
            "rsa-sha2-512": hashes.SHA512,
        }[name]
        public.verify(raw, data, padding.PKCS1v15(), hash_type())
    return name


async def sshsig_verify(store: Pkcs11Store, identity: Identity, flags: int, tmp: Path) -> None:
    """Build an SSHSIG (PROTOCOL.sshsig) with the store and let ssh-keygen verify it."""
    message = b"secretivex pkcs11 test message\n" + os.urandom(16)
    namespace = b"file"
    digest = hashlib.sha512(message).digest()
    signed = b"SSHSIG" + _s(namespace) + _s(b"") + _s(b"sha512") + _s(digest)
    signature = await store.sign(identity.blob, signed, flags)
    envelope = (
        b"SSHSIG"
        + struct.pack(">I", 1)
        + _s(identity.blob)
        + _s(namespace)
        + _s(b"")
        + _s(b"sha512")
        + _s(signature)
    )
    b64 = base64.b64encode(envelope).decode()
    armored = "-----BEGIN SSH SIGNATURE-----\n"
    armored += "\n".join(b64[i : i + 70] for i in range(0, len(b64), 70))
    armored += "\n-----END SSH SIGNATURE-----\n"
    (tmp / "msg.sig").write_text(armored)
    key_type = identity.key_type
    (tmp / "allowed").write_text(
        f"tester@example {key_type} {base64.b64encode(identity.blob).decode()}\n"
    )
    proc = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(tmp / "allowed"),
            "-I",
            "tester@example",
            "-n",
            "file",
            "-s",
            str(tmp / "msg.sig"),
        ],
        input=message,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode() + proc.stdout.decode()


# --------------------------------------------------------------------------- listing


async def test_lists_every_key_type(hsm: SoftHsm, token: Token) -> None:
    async with opened(hsm.module, token) as store:
        ids = by_comment(await store.identities())
        assert {label: ids[label].key_type for label in ids} == {
            label: ssh_type for _, _, label, ssh_type in KEYS
        }
        assert all(identity.store == "hsm" for identity in ids.values())
        health = store.health()
        assert health.state is StoreState.OK
        assert health.keys == len(KEYS)
        assert health.detail["token_label"] == token.label
        assert health.detail["token_serial"] == token.serial
        assert health.detail["login"] == "user"
        assert health.detail["login_attempts"] == 1
        assert health.detail["retry_in_s"] is None
        assert health.detail["module"] == os.path.realpath(hsm.module)


async def test_blobs_match_ssh_keygen_D(hsm: SoftHsm, token: Token) -> None:
    require_tools("ssh-keygen")
    lines = hsm.ssh_keygen_public_keys()
    theirs = {base64.b64decode(line.split()[1]) for line in lines}
    async with opened(hsm.module, token) as store:
        ours = await store.identities()
    checked = 0
    for identity in ours:
        if identity.key_type == "ssh-ed25519" and not any(
            line.startswith("ssh-ed25519 ") for line in lines
        ):
            continue  # OpenSSH before 9.x cannot read Ed25519 PKCS#11 keys; see next test
        assert identity.blob in theirs, f"{identity.comment} not listed by ssh-keygen -D"
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("key_id,label", [(k[1], k[2]) for k in KEYS])
async def test_blobs_match_pkcs11_tool(hsm: SoftHsm, token: Token, key_id: str, label: str) -> None:
    public = token.public_key(key_id)
    async with opened(hsm.module, token) as store:
        assert by_comment(await store.identities())[label].blob == openssh_blob(public)


async def test_selects_token_by_serial_and_slot(hsm: SoftHsm, token: Token) -> None:
    async with opened(hsm.module, token, token_serial=token.serial) as store:
        assert len(await store.identities()) == len(KEYS)
        slot = store.health().detail["slot"]
    async with opened(hsm.module, token, slot=slot) as store:
        assert store.health().detail["token_label"] == token.label
        assert len(await store.identities()) == len(KEYS)


async def test_unknown_token_is_degraded_not_fatal(hsm: SoftHsm, token: Token) -> None:
    async with opened(hsm.module, token, token_label="no-such-token") as store:
        assert store.health().state is StoreState.DEGRADED
        assert "not present" in (store.health().last_error or "")
        assert await store.identities() == ()


async def test_without_pin_private_keys_stay_hidden(hsm: SoftHsm, token: Token) -> None:
    async with opened(hsm.module, token, pin=None) as store:
        health = store.health()
        assert health.state is StoreState.OK
        assert health.detail["login"] == "none"
        assert await store.identities() == ()


async def test_certificate_pairs_with_private_key(hsm: SoftHsm, tmp_path: Path) -> None:
    """A private key whose only public counterpart is an X.509 certificate."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    tok = hsm.init_token()
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secretivex test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private, hashes.SHA256())
    )
    tok.import_pem(pem, key_id="0c", label="from-cert", public=False)
    tok.write_certificate(cert.public_bytes(serialization.Encoding.DER), key_id="0c", label="cert")
    async with opened(hsm.module, tok) as store:
        (identity,) = await store.identities()
        assert identity.comment == "from-cert"
        assert identity.blob == openssh_blob(private.public_key())
        signature = await store.sign(identity.blob, b"data", 0)
        assert verify_independently(identity.blob, b"data", signature) == "ecdsa-sha2-nistp256"


async def test_private_key_without_public_is_skipped(hsm: SoftHsm) -> None:
    tok = small_token(hsm)
    tok.delete_object("pubkey", "02")
    async with opened(hsm.module, tok) as store:
        assert [i.comment for i in await store.identities()] == ["ed"]
        assert any("p256" in reason for reason in store.health().detail["skipped"])


# --------------------------------------------------------------------------- signing


@pytest.mark.parametrize("label,flags,algorithm", SIGN_CASES)
async def test_sign_verifies(
    hsm: SoftHsm, token: Token, tmp_path: Path, label: str, flags: int, algorithm: str
) -> None:
    async with opened(hsm.module, token) as store:
        identity = by_comment(await store.identities())[label]
        data = os.urandom(200)
        signature = await store.sign(identity.blob, data, flags)
        assert verify_independently(identity.blob, data, signature) == algorithm
        if algorithm != "ssh-rsa":  # SSHSIG forbids SHA-1 RSA signatures
            require_tools("ssh-keygen")
            await sshsig_verify(store, identity, flags, tmp_path)


async def test_always_authenticate_key(hsm: SoftHsm) -> None:
    """CKA_ALWAYS_AUTHENTICATE (like PIV slot 9c): a context-specific login per sign."""
    tok = hsm.init_token()
    tok.generate("EC:prime256v1", key_id="0e", label="always", extra=["--always-auth"])
    pin = CountingPin(tok.pin)
    async with opened(hsm.module, tok, pin=pin) as store:
        (identity,) = await store.identities()
        for i in range(3):
            data = f"always {i}".encode()
            signature = await store.sign(identity.blob, data, 0)
            verify_independently(identity.blob, data, signature)
        assert pin.calls == 1 + 3  # the login, then one per signature


async def test_sign_unknown_blob(hsm: SoftHsm, token: Token) -> None:
    async with opened(hsm.module, token) as store:
        with pytest.raises(SignError):
            await store.sign(b"\x00\x00\x00\x0bssh-ed25519" + bytes(36), b"x", 0)


async def test_sixteen_concurrent_signers(hsm: SoftHsm, token: Token) -> None:
    async with opened(hsm.module, token) as store:
        identities = list(await store.identities())
        results: list[tuple[Identity, bytes, bytes]] = []

        async def signer(n: int) -> None:
            for i in range(25):
                identity = identities[(n + i) % len(identities)]
                data = f"{n}-{i}".encode()
                results.append((identity, data, await store.sign(identity.blob, data, 4)))

        async with anyio.create_task_group() as tg:
            for n in range(16):
                tg.start_soon(signer, n)
        assert len(results) == 16 * 25
        for identity, data, signature in results:
            verify_independently(identity.blob, data, signature)
        assert store.health().state is StoreState.OK


# --------------------------------------------------------------------------- PIN handling


async def test_wrong_pin_degrades_once_and_never_retries(
    hsm: SoftHsm, token: Token, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad_token = small_token(hsm)
    wrong = CountingPin("000000")
    async with (
        opened(
            hsm.module,
            bad_token,
            pin=wrong,
            name="bad",
            backoff_initial=0.01,
            backoff_max=0.02,
            probe_interval=0.05,
        ) as bad,
        opened(hsm.module, token, name="good") as good,
    ):
        health = bad.health()
        assert health.state is StoreState.DEGRADED
        assert health.last_error == WRONG_PIN
        assert health.detail["login"] == "failed"
        assert health.detail["login_attempts"] == 1
        assert health.detail["retry_in_s"] is None
        assert bad.token_state is TokenState.PIN_BLOCKED and bad.fault == WRONG_PIN
        assert health.detail["token_state"] == "pin_blocked"
        assert good.token_state is TokenState.READY and good.fault is None
        assert await bad.identities() == ()
        assert wrong.calls == 1
        async with maintained(bad), maintained(good):
            for _ in range(10):  # other stores keep serving meanwhile
                identity = by_comment(await good.identities())["ed"]
                signature = await good.sign(identity.blob, b"still fine", 0)
                verify_independently(identity.blob, b"still fine", signature)
                await anyio.sleep(0.05)
        assert bad.health().detail["login_attempts"] == 1
        assert wrong.calls == 1
        assert good.health().state is StoreState.OK
        assert "wrong PIN" in caplog.text

        wrong.pin = bad_token.pin  # the admin fixes the PIN and sends SIGHUP
        await bad.reload()
        assert bad.health().state is StoreState.OK
        assert bad.token_state is TokenState.READY
        assert bad.health().detail["login_attempts"] == 2
        assert len(await bad.identities()) == 2


async def test_two_stores_share_one_login(hsm: SoftHsm, token: Token) -> None:
    """PKCS#11 login is per process: closing one store must not log the other out."""
    pin_b = CountingPin(token.pin)
    async with opened(hsm.module, token, name="a") as a:
        async with opened(hsm.module, token, name="b", pin=pin_b) as b:
            assert b.health().detail["login"] == "user"
            assert b.health().detail["login_attempts"] == 0  # rode on a's login
        identity = by_comment(await a.identities())["p256"]
        verify_independently(identity.blob, b"a", await a.sign(identity.blob, b"a", 0))
    async with opened(hsm.module, token, name="c") as c:  # a fresh login works again
        assert c.health().detail["login_attempts"] == 1
        assert len(await c.identities()) == len(KEYS)


async def test_pin_never_shown(hsm: SoftHsm, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "Zq9-unique-PIN-7741"
    tok = small_token(hsm, pin=secret)
    async with opened(hsm.module, tok, pin=lambda: secret) as store:
        texts = [repr(store), repr(store.health()), str(store.health().detail)]
    async with opened(hsm.module, tok, pin=lambda: secret + "x") as store:
        texts += [repr(store), repr(store.health()), str(store.health().detail)]
    with pytest.raises(StoreError) as excinfo:
        await open_smartcard("/nonexistent/module.so", secret, DEFAULT_ALLOWLIST)
    texts.append(str(excinfo.value))
    texts.append(caplog.text)
    assert not [text for text in texts if secret in text]


async def test_pin_env_unset_is_reported(
    hsm: SoftHsm, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.delenv("SECRETIVEX_TEST_PIN", raising=False)
    cfg = Pkcs11StoreSettings(
        name="cfg", module=Path(hsm.module), token_label=token.label, pin_env="SECRETIVEX_TEST_PIN"
    )
    store = Pkcs11Store.from_config(cfg)
    await store.open()
    try:
        assert store.health().state is StoreState.DEGRADED
        assert "SECRETIVEX_TEST_PIN is not set" in (store.health().last_error or "")
        assert store.health().detail["login_attempts"] == 0
        monkeypatch.setenv("SECRETIVEX_TEST_PIN", token.pin)
        await store.reload()
        assert store.health().state is StoreState.OK
        assert len(await store.identities()) == len(KEYS)
    finally:
        await store.aclose()


async def test_pin_file(hsm: SoftHsm, token: Token, tmp_path: Path) -> None:

    (tmp_path / "pin").write_text(token.pin + "\n")
    cfg = Pkcs11StoreSettings(
        name="pkcs11", module=Path(hsm.module), token_label=token.label, pin_file=tmp_path / "pin"
    )
    store = Pkcs11Store.from_config(cfg)
    assert store.name == "pkcs11"
    await store.open()
    try:
        assert len(await store.identities()) == len(KEYS)
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- faults


async def test_token_deleted_then_recreated(hsm: SoftHsm, token: Token) -> None:
    tok = small_token(hsm)
    async with (
        opened(
            hsm.module, tok, name="flaky", probe_interval=0, backoff_initial=0.05, backoff_max=0.2
        ) as store,
        opened(hsm.module, token, name="sibling") as sibling,
    ):
        before = list(await store.identities())
        identity = before[0]
        await store.sign(identity.blob, b"before", 0)
        version = store.version

        tok.delete()
        with pytest.raises(SignError):
            await store.sign(identity.blob, b"during", 0)
        health = store.health()
        assert health.state is StoreState.DEGRADED
        assert "sign failed" in (health.last_error or "")
        assert health.detail["retry_in_s"] is not None
        assert await store.identities() == ()
        assert store.version > version

        async with maintained(store):
            await anyio.sleep(0.5)  # retries while the token is gone
            assert store.health().state is StoreState.DEGRADED
            assert "not present" in (store.health().last_error or "")
            tok.restore()
            await wait_for(lambda: store.health().state is StoreState.OK)
        assert [i.blob for i in await store.identities()] == [i.blob for i in before]
        signature = await store.sign(identity.blob, b"after", 0)
        verify_independently(identity.blob, b"after", signature)
        assert store.health().detail["login_attempts"] >= 2

        # The module was re-initialised to see the token again: a sibling store on
        # the same module re-opens its session transparently.
        sib = by_comment(await sibling.identities())["p384"]
        verify_independently(sib.blob, b"sib", await sibling.sign(sib.blob, b"sib", 0))
        assert sibling.health().state is StoreState.OK


async def test_probe_notices_removal_without_signing(hsm: SoftHsm) -> None:
    tok = small_token(hsm)
    async with (
        opened(hsm.module, tok, probe_interval=0.1, backoff_initial=0.05, backoff_max=0.2) as store,
        maintained(store),
    ):
        tok.delete()
        await wait_for(lambda: store.health().state is StoreState.DEGRADED)
        assert await store.identities() == ()
        tok.restore()
        await wait_for(lambda: store.health().state is StoreState.OK)
        assert len(await store.identities()) == 2


async def test_maintain_returns_after_aclose(hsm: SoftHsm, token: Token) -> None:
    store = Pkcs11Store("m", hsm.module, token_label=token.label, pin=lambda: token.pin)
    await store.open()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.maintain)
            await anyio.sleep(0.05)
            await store.aclose()  # the task group can only exit if maintain() returned
    assert store.health().state is StoreState.STOPPED


async def test_missing_module_is_a_store_error(tmp_path: Path) -> None:
    store = Pkcs11Store("x", tmp_path / "nope.so", token_label="x")
    with pytest.raises(StoreError, match="not found"):
        await store.open()
    (tmp_path / "junk.so").write_bytes(b"not a library")
    store = Pkcs11Store("x", tmp_path / "junk.so", token_label="x")
    with pytest.raises(StoreError, match="cannot load PKCS#11 module"):
        await store.open()


# --------------------------------------------------------------------------- ssh-add -s


async def test_open_smartcard_allowed(
    hsm: SoftHsm, token: Token, caplog: pytest.LogCaptureFixture
) -> None:
    other = hsm.init_token(pin="999999")  # a token that will not take the PIN
    other.generate("EC:prime256v1", key_id="09", label="other-token-key")
    card = await open_smartcard(hsm.module, token.pin, DEFAULT_ALLOWLIST)
    try:
        by_serial = {store.health().detail["token_serial"]: store for store in card.tokens}
        assert token.serial in by_serial and other.serial not in by_serial
        store = by_serial[token.serial]
        assert store.name == f"smartcard:{token.label}"
        assert {i.comment for i in await store.identities()} == {k[2] for k in KEYS}
        # the composite lists every token's keys and routes signatures to the owner
        listed = await card.identities()
        assert {i.comment for i in listed} >= {k[2] for k in KEYS}
        assert "other-token-key" not in {i.comment for i in listed}
        assert same_module(card, hsm.module)
        assert card.module == os.path.realpath(hsm.module)
        health = card.health()
        assert health.state is StoreState.OK and health.kind == "pkcs11"
        assert token.serial in [t["token_serial"] for t in health.detail["tokens"]]
        identity = by_comment(await store.identities())["p384"]
        verify_independently(identity.blob, b"sc", await card.sign(identity.blob, b"sc", 0))
        # the token that refused the PIN got exactly one try and was left out
        refused = [r for r in caplog.records if other.label in r.getMessage()]
        assert len([r for r in refused if "leaving out" in r.getMessage()]) == 1
        assert WRONG_PIN in refused[-1].getMessage()
        async with maintained(card):  # runs every token's maintain
            await anyio.sleep(0.1)
        version = card.version
        await card.aclose()  # the listing empties: the registry must see a new version
        assert card.version != version
    finally:
        await card.aclose()
    assert await card.identities() == ()
    assert card.health().state is StoreState.STOPPED


async def test_open_smartcard_refused(hsm: SoftHsm, token: Token, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not in pkcs11_allowlist"):
        await open_smartcard(hsm.module, token.pin, ["/opt/*"])
    with pytest.raises(StoreError, match="not in pkcs11_allowlist"):
        await open_smartcard(hsm.module, token.pin, [])
    # The allowlist applies to the realpath: a symlink in an allowed place to a module
    # elsewhere is refused, and a symlink elsewhere to an allowed module is accepted.
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(os.path.realpath(hsm.module))
    with pytest.raises(StoreError, match="not in pkcs11_allowlist"):
        await open_smartcard(str(link), token.pin, [f"{tmp_path}/*"])
    card = await open_smartcard(str(link), token.pin, DEFAULT_ALLOWLIST)
    try:
        assert same_module(card, hsm.module)
        assert same_module(card, link)
    finally:
        await card.aclose()


async def test_open_smartcard_wrong_pin_everywhere(hsm: SoftHsm, token: Token) -> None:
    with pytest.raises(StoreError, match="no usable keys") as excinfo:
        await open_smartcard(hsm.module, "wrong-pin-for-all", DEFAULT_ALLOWLIST)
    assert "wrong PIN" in str(excinfo.value)
    assert "wrong-pin-for-all" not in str(excinfo.value)


def test_module_paths(hsm: SoftHsm, tmp_path: Path) -> None:
    real = os.path.realpath(hsm.module)
    assert module_allowed(real, DEFAULT_ALLOWLIST)
    assert not module_allowed(real, [f"!{os.path.dirname(real)}/*", "/usr/lib*/*"])
    assert not module_allowed("/home/user/evil.so", DEFAULT_ALLOWLIST)
    link = tmp_path / "m.so"
    link.symlink_to(real)
    assert same_module(link, hsm.module)
    assert not same_module(link, "/usr/lib/other.so")
    assert same_module(Pkcs11Store("s", link), hsm.module)
    assert not same_module(object(), hsm.module)
    assert shutil.which("softhsm2-util")
