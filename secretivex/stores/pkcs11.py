"""Keys on PKCS#11 tokens (SoftHSM, YubiKey PIV via ykcs11, OpenSC cards, HSMs).

One ``Pkcs11Store`` serves the keys of one token (a ``type: pkcs11`` config store).
``open_smartcard`` (``ssh-add -s MODULE``) returns a ``Pkcs11Smartcard``: one
``Pkcs11Store`` per token of the module that accepts the PIN, behind one store.
How a token store behaves:

* **Listing** is answered from memory. Every private key that has a public key object
  or an X.509 certificate with the same ``CKA_ID`` becomes an identity (comment: the
  key's ``CKA_LABEL``, else the ``CKA_ID`` in hex).
* **Signing** runs on the module's own thread (``pkcs11_worker``); the event loop only
  hashes, queues and frames. Mechanisms follow OpenSSH's ssh-pkcs11 (``pkcs11_keys``).
* **Faults** (token removed, session gone, ``CKR_DEVICE_ERROR``, module errors) mark
  the token degraded: its keys leave the listing, ``health()`` names the reason, other
  stores are untouched, and ``maintain()`` re-opens it with exponential backoff.
* **PINs** are read from their source only when logging in and never logged, shown or
  kept in exceptions. A PIN the token rejects is never tried again on its own: the
  store stops with "wrong PIN; not retrying (fix pin and send SIGHUP)" until
  ``reload()``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pkcs11 import Attribute, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11e

from secretivex.config.runtime import Pkcs11StoreSettings
from secretivex.stores.base import (
    Identity,
    KeyStore,
    SignError,
    StoreError,
    StoreHealth,
    StoreState,
)
from secretivex.stores.pkcs11_keys import (
    SignPlan,
    UnsupportedKey,
    key_kind_matches,
    public_key_from_attributes,
    public_key_from_certificate,
    sign_plan,
)
from secretivex.stores.pkcs11_worker import ModuleWorker
from secretivex.stores.secrets import SecretSource

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALLOWLIST",
    "PinSource",
    "Pkcs11Smartcard",
    "Pkcs11Store",
    "module_allowed",
    "open_smartcard",
    "resolve_module",
    "same_module",
]

#: Modules ``ssh-add -s`` may load when ``agent.pkcs11_allowlist`` is not set
#: (OpenSSH's ``ssh-agent -P`` default).
from secretivex.defaults import PKCS11_ALLOWLIST as DEFAULT_ALLOWLIST  # noqa: E402

#: Returns the user PIN, or None for "do not log in". May raise ``StoreError`` (e.g.
#: an unset environment variable); that is reported and retried, never a login.
PinSource = Callable[[], str | bytes | None]

WRONG_PIN = "wrong PIN; not retrying (fix pin and send SIGHUP)"

# Errors that concern one request, not the token: the store stays healthy.
_REQUEST_ERRORS: tuple[type[Exception], ...] = (
    p11e.ArgumentsBad,
    p11e.DataInvalid,
    p11e.DataLenRange,
    p11e.FunctionCancelled,
    p11e.FunctionNotSupported,
    p11e.FunctionRejected,
    p11e.KeySizeRange,
    p11e.KeyTypeInconsistent,
    p11e.MechanismInvalid,
    p11e.MechanismParamInvalid,
)
_WRONG_PIN_ERRORS: tuple[type[Exception], ...] = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
)
_CKR_NAMES = {
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "PKCS11Error": "PKCS#11 error",
    "NoSuchToken": "no such token",
}


def describe_error(exc: BaseException) -> str:
    """``CKR_DEVICE_ERROR``-style name plus the message, if any (never a secret)."""
    name = type(exc).__name__
    if isinstance(exc, p11e.PKCS11Error):
        label = _CKR_NAMES.get(name) or "CKR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
    else:
        label = name
    text = str(exc).strip()
    return f"{label}: {text}" if text else label


class _PinProblem(Exception):
    """Login must not be attempted (again) automatically; the message says why."""


class _TokenAbsent(Exception):
    """No token matches the selector."""


# --------------------------------------------------------------------------- module paths


def resolve_module(path: str | os.PathLike[str]) -> str:
    """The canonical path of a module (``realpath``), as OpenSSH compares providers."""
    return os.path.realpath(Path(os.fspath(path)).expanduser())


def same_module(a: object, b: object) -> bool:
    """Do two modules match? (For ``ssh-add -e MODULE``.)

    Each side is a path or a ``Pkcs11Store`` (anything with a ``module`` path);
    paths are compared after ``realpath``, as OpenSSH's agent does. Other stores
    never match.
    """
    return _module_of(a) is not None and _module_of(a) == _module_of(b)


def _module_of(value: object) -> str | None:
    if not isinstance(value, str | os.PathLike):
        value = getattr(value, "module", None)
        if not isinstance(value, str):
            return None
    path = os.fspath(value)
    return resolve_module(path) if path else None


def module_allowed(path: str | os.PathLike[str], allowlist: Sequence[str]) -> bool:
    """Is ``path`` (after ``realpath``) matched by the allowlist globs?

    Like OpenSSH's ``-P`` pattern list: ``*`` and ``?`` also match ``/``, and a
    pattern starting with ``!`` refuses what it matches even if another allows it.
    """
    canonical = resolve_module(path)
    allowed = False
    for pattern in allowlist:
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(canonical, pattern[1:]):
                return False
        elif fnmatch.fnmatchcase(canonical, pattern):
            allowed = True
    return allowed


# --------------------------------------------------------------------------- PIN sources


class _FixedPin:
    """A PIN held in memory (from ``ssh-add -s``); its repr never shows it."""

    __slots__ = ("_pin",)

    def __init__(self, pin: str | bytes | None) -> None:
        self._pin = pin

    def __call__(self) -> str | bytes | None:
        return self._pin

    def __repr__(self) -> str:
        return "<PIN hidden>"


def pin_from_env(name: str) -> PinSource:
    """The PIN from an environment variable, taken out of the environment now (see
    ``stores/secrets.py``) and kept in memory for re-logins after a token fault."""
    return SecretSource(env=name, what="PIN")


def pin_from_file(path: str | os.PathLike[str]) -> PinSource:
    """The PIN from a file's first line, read at each login (warns if group/other can
    read it)."""
    return SecretSource(file=path, what="PIN")


# --------------------------------------------------------------------------- state


@dataclass(eq=False, slots=True)
class _Key:
    """One signing key: what the token needs (object, mechanism) and how to frame."""

    plan: SignPlan
    obj: Any  # python-pkcs11 PrivateKey (with SignMixin)
    mechanism: Mechanism
    always_authenticate: bool
    identity: Identity
    epoch: int  # _Token.epoch when listed: older keys belong to a closed session


@dataclass(slots=True)
class _Found:
    """What opening the token produced (built on the module thread)."""

    session: Any
    token: Any
    slot_id: int
    label: str
    serial: str
    logged_in: bool
    keys: list[tuple[SignPlan, Any, Mechanism, bool, str]]
    skipped: list[str]
    generation: int


@dataclass(eq=False)
class _Token:
    """The token as the store sees it: selector, session, keys, fault state."""

    label: str | None = None
    serial: str | None = None
    slot: int | None = None
    #: what the token reported when last opened
    seen_label: str = ""
    seen_serial: str = ""
    seen_slot: int | None = None
    session: Any = None
    token: Any = None
    logged_in: bool = False
    #: ModuleWorker.generation the session belongs to
    generation: int = -1
    #: bumped on every open, close and fault; keys of another epoch are stale
    epoch: int = 0
    keys: list[_Key] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fault: str | None = "not opened"
    pin_blocked: bool = False
    login_attempts: int = 0
    last_ok: float = 0.0
    #: the next open is an automatic recovery (not the first open or a reload)
    automatic: bool = False

    def describe(self) -> str:
        if self.seen_label or self.seen_serial:
            return f"token {self.seen_label!r} (serial {self.seen_serial})"
        if self.label is not None:
            return f"token {self.label!r}"
        if self.serial is not None:
            return f"token with serial {self.serial}"
        if self.slot is not None:
            return f"token in slot {self.slot}"
        return "first token"


# --------------------------------------------------------------------------- the store


class Pkcs11Store(KeyStore):
    """The keys of one PKCS#11 token, chosen by label, serial or slot id (else the first
    initialised token of the module)."""

    kind = "pkcs11"

    def __init__(
        self,
        name: str,
        module: str | os.PathLike[str],
        *,
        token_label: str | None = None,
        token_serial: str | None = None,
        slot: int | None = None,
        pin: PinSource | None = None,
        probe_interval: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__(name)
        self.module_configured = os.fspath(module)
        self.module = resolve_module(module)
        self._tok = _Token(label=token_label, serial=token_serial, slot=slot)
        self._pin_source = pin
        self._probe_interval = probe_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max

        self._worker: ModuleWorker | None = None
        self._keys: dict[bytes, _Key] = {}
        self._listing: tuple[Identity, ...] = ()
        self._state = StoreState.STOPPED
        self._last_error: str | None = None
        self._since_ms = _now_ms()
        self._backoff = backoff_initial
        self._retry_at: float | None = None
        self._lock = anyio.Lock()
        self._wakeup = anyio.Event()
        self._closed = False  # aclose() was called: maintain() returns

    @classmethod
    def from_config(cls, settings: Pkcs11StoreSettings) -> Pkcs11Store:
        """Build from the typed settings of a ``type: pkcs11`` store."""
        pin: PinSource | None = None
        if settings.pin_env:
            pin = pin_from_env(settings.pin_env)
        elif settings.pin_file is not None:
            pin = pin_from_file(settings.pin_file)
        return cls(
            settings.name,
            os.fspath(settings.module),
            token_label=settings.token_label,
            token_serial=settings.token_serial,
            slot=settings.slot,
            pin=pin,
        )

    def __repr__(self) -> str:
        return (
            f"Pkcs11Store(name={self.name!r}, module={self.module!r}, "
            f"token={self._tok.describe()!r}, state={self._state.value}, "
            f"keys={len(self._listing)})"
        )

    # ------------------------------------------------------------ KeyStore API

    async def identities(self) -> Sequence[Identity]:
        return self._listing

    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        key = self._keys.get(blob)
        if key is None:
            raise SignError("key is not available on this PKCS#11 token")
        worker = self._worker
        tok = self._tok
        if worker is None:
            raise SignError("PKCS#11 store is closed")
        if key.epoch != tok.epoch or tok.generation != worker.generation:
            key = await self._refreshed(key)
        algorithm, payload = key.plan.prepare(data, flags)
        try:
            raw = await worker.call(self._sign_sync, key, payload)
        except Exception as exc:
            if not (isinstance(exc, p11e.PKCS11Error) and tok.generation != worker.generation):
                raise self._sign_failed(key, exc) from None
            # The module was re-initialised (another store's recovery) while this
            # request was queued: re-open and try once more.
            key = await self._refreshed(key)
            try:
                raw = await worker.call(self._sign_sync, key, payload)
            except Exception as again:
                raise self._sign_failed(key, again) from None
        tok.last_ok = time.monotonic()
        return key.plan.finish(algorithm, raw)

    def health(self) -> StoreHealth:
        tok = self._tok
        detail: dict[str, Any] = {
            "module": self.module,
            "token_label": tok.seen_label or tok.label,
            "token_serial": tok.seen_serial or tok.serial,
            "slot": tok.seen_slot if tok.seen_slot is not None else tok.slot,
            "keys": len(self._listing),
            "login": _login_state(tok, self._pin_source is not None),
            "login_attempts": tok.login_attempts,
            "retry_in_s": self._retry_in(),
        }
        if tok.skipped:
            detail["skipped"] = list(tok.skipped)
        return StoreHealth(
            name=self.name,
            kind=self.kind,
            state=self._state,
            keys=len(self._listing),
            last_error=self._last_error,
            since_unix_ms=self._since_ms,
            detail=detail,
        )

    async def open(self) -> None:
        """Load the module and open the token.

        ``StoreError`` if the module is missing or cannot be loaded. An absent token or
        a wrong PIN is not an error here: the store starts degraded and says why.
        """
        async with self._lock:
            if self._worker is not None:
                return
            if not Path(self.module).is_file():
                raise StoreError(f"PKCS#11 module {self.module_configured} not found")
            worker = ModuleWorker.acquire(self.module)
            try:
                await worker.call(worker.load)
            except Exception as exc:
                worker.release()
                raise StoreError(
                    f"cannot load PKCS#11 module {self.module}: {describe_error(exc)}"
                ) from None
            self._worker = worker
            self._closed = False
            self._tok.automatic = False
            await self._open_token()
            self._settle()
            self._wakeup.set()  # a running maintain() recomputes its schedule

    async def aclose(self) -> None:
        async with self._lock:
            worker = self._worker
            if worker is None:
                return
            self._worker = None
            self._closed = True
            self._retry_at = None
            await self._close_token(worker)
            self._tok.fault = "closed"
            self._settle()  # empty listing, STOPPED
            worker.release()
            self._wakeup.set()

    async def reload(self) -> None:
        """SIGHUP: re-read the PIN, forget a wrong-PIN stop, re-open and re-list."""
        if self._worker is None:
            await self.open()
            return
        async with self._lock:
            worker = self._worker
            if worker is None:
                return
            await self._close_token(worker)
            self._tok.pin_blocked = False
            self._tok.automatic = False
            self._backoff = self._backoff_initial
            self._retry_at = None
            await self._open_token()
            self._settle()

    async def maintain(self) -> None:
        """Retry a degraded token with backoff; probe an idle healthy one for removal.

        Runs until ``aclose()`` (then returns), so it can live in the agent's task group
        for as long as the store is in use.
        """
        while not self._closed:
            delay = self._next_duty_in()
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._wakeup.wait()
                if self._wakeup.is_set():
                    self._wakeup = anyio.Event()
                continue  # woken early: recompute what is due
            await self._duty()

    def matches_module(self, path: str | os.PathLike[str]) -> bool:
        """For ``ssh-add -e MODULE``: does this store use that module?"""
        return self.module == resolve_module(path)

    # ------------------------------------------------------------ sign internals

    def _sign_sync(self, key: _Key, payload: bytes) -> bytes:
        """Module thread: one C_SignInit + C_Sign."""
        if key.always_authenticate:
            # CKA_ALWAYS_AUTHENTICATE (e.g. PIV slot 9c): context-specific login per sign.
            result: bytes = key.obj.sign(payload, mechanism=key.mechanism, pin=self._read_pin())
        else:
            result = key.obj.sign(payload, mechanism=key.mechanism)
        return result

    def _sign_failed(self, key: _Key, exc: BaseException) -> SignError:
        """Classify an error while signing; degrade the token if it is a token fault."""
        tok = self._tok
        if isinstance(exc, StoreError):  # e.g. the PIN source of an always-authenticate key
            return SignError(str(exc))
        if not isinstance(exc, p11e.PKCS11Error):
            log.error("%s: unexpected error while signing", self.name, exc_info=exc)
            return SignError(f"PKCS#11 signing failed: {type(exc).__name__}")
        reason = describe_error(exc)
        if isinstance(exc, _REQUEST_ERRORS):
            log.warning("%s: signing with %s failed: %s", self.name, key.identity.comment, reason)
            return SignError(f"token refused the request: {reason}")
        if key.epoch != tok.epoch:
            # The token was re-opened or degraded since: not a new fault.
            return SignError(f"token changed during the request: {reason}")
        if isinstance(exc, _WRONG_PIN_ERRORS):
            tok.pin_blocked = True
            self._degrade(WRONG_PIN)
        elif isinstance(exc, p11e.PinLocked | p11e.PinExpired):
            tok.pin_blocked = True
            self._degrade(f"{reason}; not retrying (fix the token, then send SIGHUP)")
        else:
            self._degrade(f"sign failed: {reason}")
        return SignError(f"PKCS#11 token fault: {reason}")

    async def _refreshed(self, key: _Key) -> _Key:
        """The same key after re-opening a stale session; ``SignError`` if it is gone."""
        tok = self._tok
        async with self._lock:
            worker = self._worker
            if worker is None:
                raise SignError("PKCS#11 store is closed")
            if tok.generation != worker.generation and tok.fault is None:
                await self._close_token(worker)
                tok.automatic = True
                await self._open_token()
                self._settle()
        fresh = self._keys.get(key.plan.blob)
        if fresh is None:
            raise SignError(f"{tok.describe()} is unavailable: {tok.fault or 'key gone'}")
        return fresh

    # ------------------------------------------------------------ open / close

    def _read_pin(self) -> str | None:
        if self._pin_source is None:
            return None
        pin = self._pin_source()
        if isinstance(pin, bytes):
            try:
                pin = pin.decode("utf-8")
            except UnicodeDecodeError:
                raise StoreError(f"the PIN of {self.name} is not UTF-8") from None
        return pin or None

    async def _open_token(self) -> bool:
        """Open the token, log in, list its keys; on failure record why. Lock held."""
        worker = self._worker
        tok = self._tok
        assert worker is not None
        try:
            found = await worker.call(self._open_sync)
        except _PinProblem as exc:
            tok.pin_blocked = True
            self._degrade(str(exc))
            return False
        except (_TokenAbsent, StoreError) as exc:
            self._degrade(str(exc))
            return False
        except Exception as exc:
            self._degrade(f"cannot open {tok.describe()}: {describe_error(exc)}")
            return False
        tok.epoch += 1
        tok.session, tok.token, tok.generation = found.session, found.token, found.generation
        tok.logged_in = found.logged_in
        tok.seen_label, tok.seen_serial, tok.seen_slot = found.label, found.serial, found.slot_id
        tok.skipped = found.skipped
        tok.keys = [
            _Key(
                plan=plan,
                obj=obj,
                mechanism=mechanism,
                always_authenticate=always,
                identity=Identity(blob=plan.blob, comment=comment, store=self.name),
                epoch=tok.epoch,
            )
            for plan, obj, mechanism, always, comment in found.keys
        ]
        recovered = tok.fault not in (None, "not opened", "closed")
        tok.fault = None
        tok.last_ok = time.monotonic()
        for reason in found.skipped:
            log.info("%s: %s: skipped %s", self.name, tok.describe(), reason)
        verb = "recovered" if recovered else "opened"
        log.log(
            logging.WARNING if recovered else logging.INFO,
            "%s: %s %s (%d keys)",
            self.name,
            verb,
            tok.describe(),
            len(tok.keys),
        )
        return True

    def _open_sync(self) -> _Found:
        """Module thread: find the token, open a session, log in, list keys."""
        worker = self._worker
        tok = self._tok
        assert worker is not None
        lib = worker.load()
        token = None
        lookup_error: Exception | None = None
        stale = worker.lookups > 0
        try:
            worker.lookups += 1
            token = _find_token(lib, tok)
        except p11e.PKCS11Error as exc:
            lookup_error = exc
        if token is None and (stale or tok.automatic):
            # SoftHSM (and some other modules) only see tokens created, re-created or
            # re-inserted since C_Initialize after C_Finalize + C_Initialize.
            worker.reinitialize()
            worker.lookups += 1
            token = _find_token(lib, tok)
        elif lookup_error is not None:
            raise lookup_error
        if token is None:
            raise _TokenAbsent(f"{tok.describe()} not present in {worker.path}")

        slot_id = token.slot.slot_id
        flags = token.flags
        pin = self._read_pin()
        logged_in = False
        if pin is None:
            session = token.open()
        elif worker.logins.get(slot_id):
            # Another store of this process is logged in to this token; PKCS#11 login
            # state is per application, so this session is logged in too.
            session = token.open()
            logged_in = True
            worker.logins[slot_id] += 1
        elif flags & TokenFlag.USER_PIN_LOCKED:
            raise _PinProblem("user PIN is locked on the token; not logging in")
        elif flags & TokenFlag.USER_PIN_FINAL_TRY and tok.automatic:
            raise _PinProblem(
                "one PIN try left on the token; not logging in automatically "
                "(check the pin and send SIGHUP)"
            )
        else:
            tok.login_attempts += 1
            try:
                session = token.open(user_pin=pin)
            except _WRONG_PIN_ERRORS:
                raise _PinProblem(WRONG_PIN) from None
            except (p11e.PinLocked, p11e.PinExpired) as exc:
                raise _PinProblem(
                    f"{describe_error(exc)}; not retrying (fix the token, then send SIGHUP)"
                ) from None
            except p11e.UserAlreadyLoggedIn:
                session = token.open()
            logged_in = True
            worker.logins[slot_id] = worker.logins.get(slot_id, 0) + 1
        try:
            keys, skipped = _list_keys(session, token)
        except BaseException:
            _close_session(worker, session, slot_id, logged_in)
            raise
        return _Found(
            session=session,
            token=token,
            slot_id=slot_id,
            label=token.label,
            serial=_serial(token),
            logged_in=logged_in,
            keys=keys,
            skipped=skipped,
            generation=worker.generation,
        )

    async def _close_token(self, worker: ModuleWorker) -> None:
        """Close the session (if it is still of this module generation). Lock held."""
        tok = self._tok
        session, tok.session = tok.session, None
        tok.keys = []
        tok.epoch += 1
        if session is not None and tok.generation == worker.generation:
            slot_id, logged_in = tok.seen_slot, tok.logged_in
            with contextlib.suppress(Exception):
                await worker.call(_close_session, worker, session, slot_id, logged_in)
        tok.logged_in = False

    # ------------------------------------------------------------ faults, backoff

    def _degrade(self, reason: str) -> None:
        """Mark the token faulty; its keys leave the listing at once."""
        tok = self._tok
        changed = tok.fault != reason
        tok.fault = reason
        tok.keys = []
        tok.epoch += 1
        if changed:
            log.warning("%s: %s degraded: %s", self.name, tok.describe(), reason)
        else:
            log.debug("%s: %s still degraded: %s", self.name, tok.describe(), reason)
        if tok.pin_blocked:
            self._retry_at = None
        elif self._retry_at is None:
            self._retry_at = time.monotonic() + self._backoff
        self._settle()
        self._wakeup.set()

    def _settle(self) -> None:
        """Recompute listing, state and error from the token state."""
        tok = self._tok
        healthy = tok.fault is None and self._worker is not None
        keys: dict[bytes, _Key] = {}
        if healthy:
            for key in tok.keys:
                keys.setdefault(key.plan.blob, key)
        listing = tuple(key.identity for key in keys.values())
        self._keys = keys
        if listing != self._listing:
            self._listing = listing
            self._changed()
        if self._worker is None:
            self._publish(StoreState.STOPPED, None)
        elif not healthy:
            self._publish(StoreState.DEGRADED, tok.fault)
        else:
            self._publish(StoreState.OK, None)
            self._retry_at = None
            self._backoff = self._backoff_initial

    def _publish(self, state: StoreState, error: str | None) -> None:
        if state != self._state:
            self._since_ms = _now_ms()
        self._state = state
        if error is not None:
            self._last_error = error

    def _retry_in(self) -> float | None:
        if self._retry_at is None:
            return None
        return round(max(0.0, self._retry_at - time.monotonic()), 3)

    def _next_duty_in(self) -> float:
        tok = self._tok
        if self._worker is None:
            return math.inf
        now = time.monotonic()
        if tok.fault is not None:
            if tok.pin_blocked or self._retry_at is None:
                return math.inf
            return max(0.0, self._retry_at - now)
        if self._probe_interval > 0:
            return max(0.0, tok.last_ok + self._probe_interval - now)
        return math.inf

    async def _duty(self) -> None:
        async with self._lock:
            worker = self._worker
            tok = self._tok
            now = time.monotonic()
            if worker is None:
                return
            if tok.fault is None:
                if self._probe_interval > 0 and now - tok.last_ok >= self._probe_interval:
                    await self._probe(worker)
                return
            if tok.pin_blocked or self._retry_at is None or now < self._retry_at:
                return
            await self._close_token(worker)
            tok.automatic = True
            if not await self._open_token() and not tok.pin_blocked:
                self._backoff = min(self._backoff * 2, self._backoff_max)
                self._retry_at = time.monotonic() + self._backoff
            self._settle()

    async def _probe(self, worker: ModuleWorker) -> None:
        """Cheap liveness check of an idle token (C_GetTokenInfo on its slot). Lock held."""
        tok = self._tok
        if tok.generation != worker.generation:
            # Another store re-initialised the module: this session is gone.
            await self._close_token(worker)
            tok.automatic = True
            await self._open_token()
            self._settle()
            return
        try:
            serial = await worker.call(_probe_sync, tok.token)
        except Exception as exc:
            self._degrade(f"token check failed: {describe_error(exc)}")
            return
        if serial != tok.seen_serial:
            self._degrade(f"a different token (serial {serial}) is in the slot")
            return
        tok.last_ok = time.monotonic()


# --------------------------------------------------------------------------- module thread helpers


def _now_ms() -> int:
    return int(time.time() * 1000)


def _serial(token: Any) -> str:
    return bytes(token.serial).decode("ascii", "replace").strip()


def _login_state(link: _Token, has_pin: bool) -> str:
    if link.pin_blocked:
        return "failed"
    if link.logged_in:
        return "user"
    return "pending" if has_pin and link.session is None else "none"


def _probe_sync(token: Any) -> str:
    return _serial(token.slot.get_token())


def _find_token(lib: Any, link: _Token) -> Any:
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
        if link.serial is not None and _serial(token) != link.serial:
            continue
        return token
    return None


def _close_session(
    worker: ModuleWorker, session: Any, slot_id: int | None, logged_in: bool
) -> None:
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


def _list_keys(
    session: Any, token: Any
) -> tuple[list[tuple[SignPlan, Any, Mechanism, bool, str]], list[str]]:
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

    keys: list[tuple[SignPlan, Any, Mechanism, bool, str]] = []
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
        comment = label or public_label or ckid.hex() or token.label
        always = bool(attrs.get(Attribute.ALWAYS_AUTHENTICATE, False))
        keys.append((plan, obj, mechanism, always, comment))
    return keys, skipped


# --------------------------------------------------------------------------- ssh-add -s


def _tokens_sync(worker: ModuleWorker) -> list[tuple[int, str, str]]:
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
            out.append((slot.slot_id, token.label, _serial(token)))
    return out


class Pkcs11Smartcard(KeyStore):
    """What ``ssh-add -s MODULE`` adds: the tokens of one module that took the PIN.

    One ``Pkcs11Store`` per token underneath (each with its own session, faults and
    recovery); this store lists their keys in slot order and routes signatures.
    ``ssh-add -e MODULE`` removes it whole (``same_module`` finds it).
    """

    kind = "pkcs11"

    def __init__(self, name: str, module: str, tokens: Sequence[Pkcs11Store]) -> None:
        super().__init__(name)
        self.module = module
        self.tokens = tuple(tokens)
        self._seen: tuple[int, ...] = ()
        self._listing: tuple[Identity, ...] = ()
        self._owners: dict[bytes, Pkcs11Store] = {}

    @property
    def version(self) -> int:
        """Moves whenever a token's listing moves (the registry caches on it)."""
        return self._own_version + sum(token.version for token in self.tokens)

    @version.setter
    def version(self, value: int) -> None:
        self._own_version = value

    def __repr__(self) -> str:
        return (
            f"Pkcs11Smartcard(name={self.name!r}, module={self.module!r}, "
            f"tokens={len(self.tokens)})"
        )

    def _refresh(self) -> None:
        seen = tuple(token.version for token in self.tokens)
        if seen == self._seen:
            return
        owners: dict[bytes, Pkcs11Store] = {}
        listing: list[Identity] = []
        for token in self.tokens:
            for identity in token._listing:
                if identity.blob not in owners:
                    owners[identity.blob] = token
                    listing.append(identity)
        self._owners, self._listing, self._seen = owners, tuple(listing), seen

    async def identities(self) -> Sequence[Identity]:
        self._refresh()
        return self._listing

    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        self._refresh()
        token = self._owners.get(blob)
        if token is None:
            raise SignError("key is not available on this smartcard")
        return await token.sign(blob, data, flags)

    def health(self) -> StoreHealth:
        parts = [token.health() for token in self.tokens]
        degraded = [part for part in parts if part.state is not StoreState.OK]
        errors = [f"{part.name}: {part.last_error}" for part in degraded if part.last_error]
        if all(part.state is StoreState.STOPPED for part in parts):
            state = StoreState.STOPPED
        else:
            state = StoreState.DEGRADED if degraded else StoreState.OK
        return StoreHealth(
            name=self.name,
            kind=self.kind,
            state=state,
            keys=sum(part.keys for part in parts),
            last_error="; ".join(errors) or None,
            since_unix_ms=max((part.since_unix_ms for part in parts), default=_now_ms()),
            detail={
                "module": self.module,
                "tokens": [
                    {"store": part.name, "state": part.state.value, **part.detail} for part in parts
                ],
            },
        )

    async def maintain(self) -> None:
        async with anyio.create_task_group() as tg:
            for token in self.tokens:
                tg.start_soon(token.maintain)

    async def reload(self) -> None:
        for token in self.tokens:
            await token.reload()

    async def aclose(self) -> None:
        for token in self.tokens:
            await token.aclose()

    def matches_module(self, path: str | os.PathLike[str]) -> bool:
        return self.module == resolve_module(path)


async def open_smartcard(
    module_path: str,
    pin: str | bytes | None,
    allowlist: Sequence[str] = DEFAULT_ALLOWLIST,
) -> Pkcs11Smartcard:
    """``ssh-add -s MODULE``: open every token of an allowed module that takes the PIN.

    ``StoreError`` when the module is outside the allowlist (checked after
    ``realpath``, like ``ssh-agent -P``), missing, unloadable, or when no token yields
    a key. Each token gets exactly one login attempt; tokens that reject the PIN or
    have no usable key are left out, as OpenSSH does. The returned store is open;
    ``aclose()`` it on ``ssh-add -e`` (``same_module(store, path)`` finds it) and run
    its ``maintain()`` so its tokens recover from faults.
    """
    canonical = resolve_module(module_path)
    if not Path(canonical).is_file():
        raise StoreError(f"PKCS#11 module {module_path} not found")
    if not module_allowed(canonical, allowlist):
        raise StoreError(f"module {canonical} not in pkcs11_allowlist")
    worker = ModuleWorker.acquire(canonical)
    try:
        tokens = await worker.call(_tokens_sync, worker)
    except Exception as exc:
        raise StoreError(f"cannot use PKCS#11 module {canonical}: {describe_error(exc)}") from None
    finally:
        worker.release()  # each token store holds its own reference

    secret = _FixedPin(pin)
    labels = [label for _, label, _ in tokens]
    stores: list[Pkcs11Store] = []
    problems: list[str] = []
    for _slot_id, label, serial in tokens:
        name = f"smartcard:{label}" if labels.count(label) == 1 else f"smartcard:{label}#{serial}"
        store = Pkcs11Store(name, canonical, token_serial=serial, pin=secret)
        await store.open()
        if store.health().state is StoreState.OK and store._listing:
            stores.append(store)
            continue
        problems.append(f"{label or serial}: {store._tok.fault or 'no usable keys'}")
        log.warning("ssh-add -s %s: leaving out token %r: %s", canonical, label, problems[-1])
        await store.aclose()
    if not stores:
        detail = "; ".join(problems) if problems else "no initialised token"
        raise StoreError(f"no usable keys in {canonical} ({detail})")
    return Pkcs11Smartcard(f"smartcard:{canonical}", canonical, stores)
