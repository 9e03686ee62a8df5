"""What is on a module and a token: tokens by selector, key objects paired with their
public halves. Everything here runs on the module's thread (inside ``ModuleWorker.call``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e

from secretivex.keys.listed import listed_comment
from secretivex.stores.pkcs11.mechanisms import (
    SignPlan,
    UnsupportedKey,
    key_kind_matches,
    public_key_from_attributes,
    public_key_from_certificate,
    sign_plan,
)
from secretivex.stores.pkcs11.worker import ModuleWorker

#: (sign plan, private key object, mechanism, CKA_ALWAYS_AUTHENTICATE, comment)
FoundKey = tuple[SignPlan, Any, Mechanism, bool, str]


@dataclass(frozen=True, slots=True)
class Selector:
    """Which token of a module a store serves (none set: the first initialised one)."""

    label: str | None = None
    serial: str | None = None
    slot: int | None = None

    def describe(self) -> str:
        if self.label is not None:
            return f"token {self.label!r}"
        if self.serial is not None:
            return f"token with serial {self.serial}"
        if self.slot is not None:
            return f"token in slot {self.slot}"
        return "first token"


def serial_of(token: Any) -> str:
    return bytes(token.serial).decode("ascii", "replace").strip()


def probe_sync(token: Any) -> str:
    return serial_of(token.slot.get_token())


def find_token(lib: Any, link: Selector) -> Any:
    for slot in lib.get_slots(token_present=True):
        if link.slot is not None and slot.slot_id != link.slot:
            continue
        try:
            token = slot.get_token()
        except (p11e.TokenNotPresent, p11e.TokenNotRecognised):
            continue
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            continue
        if link.label is not None and token.label != link.label:
            continue
        if link.serial is not None and serial_of(token) != link.serial:
            continue
        return token
    return None


def close_session(worker: ModuleWorker, session: Any, slot_id: int | None, logged_in: bool) -> None:
    """Module thread. ``C_Logout`` is per application, so a session shared with another
    logged-in store is left open rather than logging that store out."""
    if logged_in and slot_id is not None:
        count = worker.logins.get(slot_id, 0) - 1
        if count > 0:
            worker.logins[slot_id] = count
            return
        worker.logins.pop(slot_id, None)
    session.close()


_PRIVATE_ATTRS = [
    Attribute.ID,
    Attribute.LABEL,
    Attribute.KEY_TYPE,
    Attribute.SIGN,
    Attribute.ALWAYS_AUTHENTICATE,
]
_PUBLIC_ATTRS = [
    Attribute.ID,
    Attribute.LABEL,
    Attribute.KEY_TYPE,
    Attribute.EC_PARAMS,
    Attribute.EC_POINT,
    Attribute.MODULUS,
    Attribute.PUBLIC_EXPONENT,
]
_CERT_ATTRS = [Attribute.ID, Attribute.LABEL, Attribute.VALUE]
_MECHANISMS = {
    "ed25519": Mechanism.EDDSA,
    "ecdsa": Mechanism.ECDSA,
    "rsa": Mechanism.RSA_PKCS,
}


def _attributes(obj: Any, keys: list[Attribute]) -> dict[Any, Any]:
    """As many of ``keys`` as the object has (tokens differ in what they refuse)."""
    try:
        return dict(obj.get_attributes(keys))
    except (p11e.PKCS11Error, ValueError, UnicodeDecodeError):
        out: dict[Any, Any] = {}
        for key in keys:
            with contextlib.suppress(p11e.PKCS11Error, ValueError, UnicodeDecodeError):
                out[key] = obj[key]
        return out


def list_keys(session: Any, token: Any) -> tuple[list[FoundKey], list[str]]:
    """Module thread: pair private keys with public keys/certificates by CKA_ID."""
    publics: dict[bytes, list[tuple[str, Any]]] = {}
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
        attrs = _attributes(obj, _PUBLIC_ATTRS)
        key_type = attrs.get(Attribute.KEY_TYPE)
        if key_type is None:
            continue
        try:
            public = public_key_from_attributes(int(key_type), attrs)
        except UnsupportedKey as exc:
            publics.setdefault(bytes(attrs.get(Attribute.ID, b"")), []).append((str(exc), None))
            continue
        label = attrs.get(Attribute.LABEL) or ""
        publics.setdefault(bytes(attrs.get(Attribute.ID, b"")), []).append((label, public))
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE}):
        attrs = _attributes(obj, _CERT_ATTRS)
        value = attrs.get(Attribute.VALUE)
        if not value:
            continue
        try:
            public = public_key_from_certificate(bytes(value))
        except UnsupportedKey:
            continue
        label = attrs.get(Attribute.LABEL) or ""
        publics.setdefault(bytes(attrs.get(Attribute.ID, b"")), []).append((label, public))

    try:
        available = set(token.slot.get_mechanisms())
    except (p11e.PKCS11Error, ValueError):
        available = None

    privates = []
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
        attrs = _attributes(obj, _PRIVATE_ATTRS)
        ckid = bytes(attrs.get(Attribute.ID, b""))
        privates.append((ckid, str(attrs.get(Attribute.LABEL) or ""), attrs, obj))
    privates.sort(key=lambda item: (item[0], item[1]))
    empty_ids = sum(1 for item in privates if not item[0])

    keys: list[FoundKey] = []
    skipped: list[str] = []
    seen: set[bytes] = set()
    for ckid, label, attrs, obj in privates:
        name = label or ckid.hex() or "(no label, no id)"
        if not attrs.get(Attribute.SIGN, True) or not hasattr(obj, "sign"):
            skipped.append(f"{name}: not a signing key (CKA_SIGN false)")
            continue
        key_type = attrs.get(Attribute.KEY_TYPE)
        if key_type is None:
            skipped.append(f"{name}: unknown key type")
            continue
        candidates = publics.get(ckid, [])
        if not ckid and (empty_ids > 1 or len(candidates) > 1):
            skipped.append(f"{name}: no CKA_ID, cannot pair it with its public key")
            continue
        reasons = [text for text, public in candidates if public is None]
        plan = None
        public_label = ""
        for text, public in candidates:
            if public is None:
                continue
            try:
                candidate = sign_plan(public)
            except UnsupportedKey as exc:
                reasons.append(str(exc))
                continue
            if key_kind_matches(int(key_type), candidate):
                plan, public_label = candidate, text
                break
        if plan is None:
            why = reasons[0] if reasons else "no public key or certificate with the same CKA_ID"
            skipped.append(f"{name}: {why}")
            continue
        mechanism = _MECHANISMS[plan.kind]
        if available is not None and mechanism not in available:
            skipped.append(f"{name}: token lacks {mechanism.name}")
            continue
        if plan.blob in seen:
            continue
        seen.add(plan.blob)
        # Labels are the token's to choose: no NUL (OpenSSH's clients would reject the
        # whole listing), no control characters, bounded length.
        comment = listed_comment(label or public_label or ckid.hex() or token.label)
        always = bool(attrs.get(Attribute.ALWAYS_AUTHENTICATE, False))
        keys.append((plan, obj, mechanism, always, comment))
    return keys, skipped


def tokens_sync(worker: ModuleWorker) -> list[tuple[int, str, str]]:
    """Module thread: (slot id, label, serial) of every initialised token."""
    lib = worker.load()
    if worker.lookups > 0:
        # Looked at before: SoftHSM-like modules would not show newer tokens.
        worker.reinitialize()
    worker.lookups += 1
    out = []
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except (p11e.TokenNotPresent, p11e.TokenNotRecognised):
            continue
        if token.flags & TokenFlag.TOKEN_INITIALIZED:
            out.append((slot.slot_id, token.label, serial_of(token)))
    return out
