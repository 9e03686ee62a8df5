"""``Pkcs11Store``: the keys of one PKCS#11 token (a ``type: pkcs11`` config store).

* **Listing** is answered from memory: every private key with a public key object or an
  X.509 certificate of the same ``CKA_ID`` (``discovery``).
* **Signing** runs on the module's own thread (``worker``); the event loop only hashes,
  queues and frames (``mechanisms``, as OpenSSH's ssh-pkcs11).
* **Lifecycle** moves only through ``lifecycle.transition``: faults (token removed,
  session gone, ``CKR_DEVICE_ERROR``) make the store ``FAULTED`` (keys leave the listing,
  ``health()`` says why, ``maintain()`` re-opens with exponential backoff); a PIN the
  token refuses makes it ``PIN_BLOCKED`` until ``reload()``.
* **PINs** come from ``pins`` and are never logged, shown or kept in exceptions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from pkcs11 import Mechanism, TokenFlag
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
from secretivex.stores.pkcs11.discovery import (
    FoundKey,
    Selector,
    close_session,
    find_token,
    list_keys,
    probe_sync,
    serial_of,
)
from secretivex.stores.pkcs11.errors import (
    PIN_UNUSABLE_ERRORS,
    REQUEST_ERRORS,
    WRONG_PIN,
    WRONG_PIN_ERRORS,
    PinProblem,
    TokenAbsent,
    describe_error,
    pin_unusable,
)
from secretivex.stores.pkcs11.lifecycle import TokenEvent, TokenState, transition
from secretivex.stores.pkcs11.mechanisms import SignPlan
from secretivex.stores.pkcs11.modules import resolve_module
from secretivex.stores.pkcs11.pins import NoPin, Pin, PinPromptFailed, as_pin, pin_from_config
from secretivex.stores.pkcs11.worker import ModuleWorker

log = logging.getLogger(__name__)


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
    keys: list[FoundKey]
    skipped: list[str]
    generation: int


class _NeedPin(Exception):
    """Module thread: the token is there and wants a PIN that must be asked for first."""

    def __init__(self, label: str, serial: str) -> None:
        super().__init__(label, serial)
        #: the token found, so that the question names it (not just the selector)
        self.label = label
        self.serial = serial


@dataclass(eq=False)
class _Token:
    """The token as the store sees it: selector, session, keys, lifecycle state."""

    selector: Selector
    state: TokenState = TokenState.STOPPED
    #: why the token is not READY (kept until it is READY again)
    reason: str | None = "not opened"
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
    login_attempts: int = 0
    last_ok: float = 0.0

    def describe(self) -> str:
        if self.seen_label or self.seen_serial:
            return f"token {self.seen_label!r} (serial {self.seen_serial})"
        return self.selector.describe()


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
        pin: Pin | Callable[[], str | bytes | None] | None = None,
        probe_interval: float = 5.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        super().__init__(name)
        self.module_configured = os.fspath(module)
        self.module = resolve_module(module)
        self._tok = _Token(Selector(token_label, token_serial, slot))
        self._pin = as_pin(pin)
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
        return cls(
            settings.name,
            os.fspath(settings.module),
            token_label=settings.token_label,
            token_serial=settings.token_serial,
            slot=settings.slot,
            pin=pin_from_config(settings),
        )

    def __repr__(self) -> str:
        return (
            f"Pkcs11Store(name={self.name!r}, module={self.module!r}, "
            f"token={self._tok.describe()!r}, state={self._tok.state}, "
            f"keys={len(self._listing)})"
        )

    # ------------------------------------------------------------ public state

    @property
    def token_state(self) -> TokenState:
        """Where the token is in its lifecycle."""
        return self._tok.state

    @property
    def fault(self) -> str | None:
        """Why the token is not ready (None when it is)."""
        return None if self._tok.state is TokenState.READY else self._tok.reason

    @property
    def listing(self) -> tuple[Identity, ...]:
        """The identities served right now (what ``identities()`` returns)."""
        return self._listing

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
        pin = await self._sign_pin(key)
        try:
            raw = await worker.call(_sign_sync, key, payload, pin)
        except Exception as exc:
            if not (isinstance(exc, p11e.PKCS11Error) and tok.generation != worker.generation):
                raise self._sign_failed(key, exc) from None
            # The module was re-initialised (another store's recovery) while this
            # request was queued: re-open and try once more.
            key = await self._refreshed(key)
            try:
                raw = await worker.call(_sign_sync, key, payload, pin)
            except Exception as again:
                raise self._sign_failed(key, again) from None
        tok.last_ok = time.monotonic()
        return key.plan.finish(algorithm, raw)

    def health(self) -> StoreHealth:
        tok = self._tok
        detail: dict[str, Any] = {
            "module": self.module,
            "token_label": tok.seen_label or tok.selector.label,
            "token_serial": tok.seen_serial or tok.selector.serial,
            "slot": tok.seen_slot if tok.seen_slot is not None else tok.selector.slot,
            "keys": len(self._listing),
            "token_state": str(tok.state),
            "login": self._login_state(),
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
        a wrong PIN is not an error here: the store starts degraded and says why. A PIN
        that must be asked for (``pin_command``, ``pin_prompt``) is asked by
        ``maintain()``, so a person at a prompt never holds up the agent's start.
        """
        async with self._lock:
            if self._worker is not None:
                return
            if not Path(self.module).is_file():
                raise StoreError(f"PKCS#11 module {self.module_configured} not found")
            worker = ModuleWorker.of(self.module)
            try:
                await worker.call(worker.load)
            except Exception as exc:
                raise StoreError(
                    f"cannot load PKCS#11 module {self.module}: {describe_error(exc)}"
                ) from None
            self._worker = worker
            self._closed = False
            self._move(TokenEvent.LOADED)
            if self._pin.asks:
                self._state = StoreState.DEGRADED
                self._last_error = "waiting for the PIN (asked at first use)"
            else:
                await self._open_token()
            # else: the first open asks for the PIN; maintain() does it in the
            # background, so the agent listens (and other stores serve) meanwhile.
            self._wakeup.set()  # a running maintain() recomputes its schedule

    async def aclose(self) -> None:
        async with self._lock:
            worker = self._worker
            if worker is None:
                return
            await self._close_token(worker)
            self._worker = None
            self._closed = True
            self._tok.reason = "closed"
            self._move(TokenEvent.STOP)
            self._wakeup.set()

    async def reload(self) -> None:
        """SIGHUP: forget a PIN stop, re-open and re-list. An env/file PIN is read again;
        a prompted PIN is asked again only if it was refused or never given (a refusal
        already forgot it), so a reload for another reason does not pester anyone."""
        if self._worker is None:
            await self.open()
            return
        async with self._lock:
            worker = self._worker
            if worker is None:
                return
            await self._close_token(worker)
            self._move(TokenEvent.RELOAD)
            await self._open_token()

    async def maintain(self) -> None:
        """Retry a faulted token with backoff; probe an idle ready one for removal.

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

    # ------------------------------------------------------------ lifecycle

    def _move(self, event: TokenEvent, reason: str | None = None) -> None:
        """The one place the token's state changes; then listing, health and the retry
        schedule follow from the new state."""
        tok = self._tok
        before = tok.state
        tok.state = transition(before, event)
        if event in (TokenEvent.FAILED, TokenEvent.PIN_REFUSED):
            assert reason is not None
            if tok.reason != reason or before is not tok.state:
                log.warning("%s: %s degraded: %s", self.name, tok.describe(), reason)
            else:
                log.debug("%s: %s still degraded: %s", self.name, tok.describe(), reason)
            tok.reason = reason
            tok.keys = []
            tok.epoch += 1
            if event is TokenEvent.PIN_REFUSED:
                self._pin.forget()
            self._wakeup.set()
        if tok.state is TokenState.READY:
            tok.reason = None
            self._retry_at = None
            self._backoff = self._backoff_initial
        elif tok.state.retries:
            if self._retry_at is None:
                self._retry_at = time.monotonic() + self._backoff
        elif tok.state is not TokenState.RECOVERING:
            self._retry_at = None
        self._settle()

    def _settle(self) -> None:
        """Recompute listing and health from the token state."""
        tok = self._tok
        if tok.state in (TokenState.CLOSED, TokenState.RECOVERING):
            return  # between close and open: nothing visible changes until it opens
        keys: dict[bytes, _Key] = {}
        if tok.state is TokenState.READY:
            for key in tok.keys:
                keys.setdefault(key.plan.blob, key)
        listing = tuple(key.identity for key in keys.values())
        self._keys = keys
        if listing != self._listing:
            self._listing = listing
            self._changed()
        state = tok.state.store_state
        if state != self._state:
            self._since_ms = _now_ms()
        self._state = state
        if state is StoreState.DEGRADED and tok.reason is not None:
            self._last_error = tok.reason

    def _login_state(self) -> str:
        tok = self._tok
        if tok.state is TokenState.PIN_BLOCKED:
            return "failed"
        if tok.logged_in:
            return "user"
        return "pending" if not isinstance(self._pin, NoPin) and tok.session is None else "none"

    def _retry_in(self) -> float | None:
        if self._retry_at is None:
            return None
        return round(max(0.0, self._retry_at - time.monotonic()), 3)

    def _next_duty_in(self) -> float:
        tok = self._tok
        if self._worker is None:
            return math.inf
        now = time.monotonic()
        if tok.state is TokenState.READY:
            if self._probe_interval > 0:
                return max(0.0, tok.last_ok + self._probe_interval - now)
            return math.inf
        if tok.state is TokenState.CLOSED:
            return 0.0  # opened without asking for the PIN yet: ask now
        if not tok.state.retries or self._retry_at is None:
            return math.inf
        return max(0.0, self._retry_at - now)

    async def _duty(self) -> None:
        async with self._lock:
            worker = self._worker
            tok = self._tok
            now = time.monotonic()
            if worker is None:
                return
            if tok.state is TokenState.READY:
                if self._probe_interval > 0 and now - tok.last_ok >= self._probe_interval:
                    await self._probe(worker)
                return
            if tok.state is TokenState.CLOSED:
                await self._open_token()
                return
            if not tok.state.retries or self._retry_at is None or now < self._retry_at:
                return
            await self._reopen(worker)
            if tok.state.retries:
                self._backoff = min(self._backoff * 2, self._backoff_max)
                self._retry_at = time.monotonic() + self._backoff

    async def _reopen(self, worker: ModuleWorker) -> None:
        """Automatic re-open (after a fault or a module re-initialisation). Lock held."""
        await self._close_token(worker)
        self._retry_at = None
        self._move(TokenEvent.RETRY)
        await self._open_token()

    async def _probe(self, worker: ModuleWorker) -> None:
        """Cheap liveness check of an idle token (C_GetTokenInfo on its slot). Lock held."""
        tok = self._tok
        if tok.generation != worker.generation:
            # Another store re-initialised the module: this session is gone.
            await self._reopen(worker)
            return
        try:
            serial = await worker.call(probe_sync, tok.token)
        except Exception as exc:
            self._move(TokenEvent.FAILED, f"token check failed: {describe_error(exc)}")
            return
        if serial != tok.seen_serial:
            self._move(TokenEvent.FAILED, f"a different token (serial {serial}) is in the slot")
            return
        tok.last_ok = time.monotonic()

    # ------------------------------------------------------------ sign internals

    async def _sign_pin(self, key: _Key) -> str | None:
        """The PIN for a CKA_ALWAYS_AUTHENTICATE key (context-specific login per sign)."""
        if not key.always_authenticate:
            return None
        try:
            return await self._pin.read(self._who())
        except StoreError as exc:
            raise SignError(str(exc)) from None

    def _sign_failed(self, key: _Key, exc: BaseException) -> SignError:
        """Classify an error while signing; a token fault moves the lifecycle."""
        tok = self._tok
        if not isinstance(exc, p11e.PKCS11Error):
            log.error("%s: unexpected error while signing", self.name, exc_info=exc)
            return SignError(f"PKCS#11 signing failed: {type(exc).__name__}")
        reason = describe_error(exc)
        if isinstance(exc, REQUEST_ERRORS):
            log.warning("%s: signing with %s failed: %s", self.name, key.identity.comment, reason)
            return SignError(f"token refused the request: {reason}")
        if key.epoch != tok.epoch or tok.state is not TokenState.READY:
            # The token was re-opened or degraded since: not a new fault.
            return SignError(f"token changed during the request: {reason}")
        if isinstance(exc, WRONG_PIN_ERRORS):
            self._move(TokenEvent.PIN_REFUSED, WRONG_PIN)
        elif isinstance(exc, PIN_UNUSABLE_ERRORS):
            self._move(TokenEvent.PIN_REFUSED, pin_unusable(exc))
        else:
            self._move(TokenEvent.FAILED, f"sign failed: {reason}")
        return SignError(f"PKCS#11 token fault: {reason}")

    async def _refreshed(self, key: _Key) -> _Key:
        """The same key after re-opening a stale session; ``SignError`` if it is gone."""
        tok = self._tok
        async with self._lock:
            worker = self._worker
            if worker is None:
                raise SignError("PKCS#11 store is closed")
            if tok.generation != worker.generation and tok.state is TokenState.READY:
                await self._reopen(worker)
        fresh = self._keys.get(key.plan.blob)
        if fresh is None:
            raise SignError(f"{tok.describe()} is unavailable: {tok.reason or 'key gone'}")
        return fresh

    # ------------------------------------------------------------ open / close

    def _who(self) -> str:
        """The token as a PIN prompt names it."""
        return f"{self._tok.describe()} (store {self.name})"

    async def _open_token(self) -> None:
        """Open the token, log in, list its keys; the outcome moves the lifecycle. The
        token must be CLOSED or RECOVERING; lock held."""
        worker = self._worker
        tok = self._tok
        assert worker is not None
        automatic = tok.state is TokenState.RECOVERING
        try:
            pin = None if self._pin.asks else await self._pin.read(self._who())
            try:
                found = await worker.call(self._open_sync, pin, automatic)
            except _NeedPin as need:
                pin = await self._pin.read(
                    f"token {need.label!r} (serial {need.serial}) (store {self.name})"
                )
                found = await worker.call(self._open_sync, pin, automatic)
        except (PinProblem, PinPromptFailed) as exc:
            self._move(TokenEvent.PIN_REFUSED, str(exc))
            return
        except (TokenAbsent, StoreError) as exc:
            self._move(TokenEvent.FAILED, str(exc))
            return
        except Exception as exc:
            self._move(TokenEvent.FAILED, f"cannot open {tok.describe()}: {describe_error(exc)}")
            return
        recovered = tok.reason not in (None, "not opened", "closed")
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
        tok.last_ok = time.monotonic()
        self._move(TokenEvent.OPENED)
        for reason in found.skipped:
            log.info("%s: %s: skipped %s", self.name, tok.describe(), reason)
        log.log(
            logging.WARNING if recovered else logging.INFO,
            "%s: %s %s (%d keys)",
            self.name,
            "recovered" if recovered else "opened",
            tok.describe(),
            len(tok.keys),
        )

    def _open_sync(self, pin: str | None, automatic: bool) -> _Found:
        """Module thread: find the token, open a session, log in, list keys.

        ``_NeedPin`` when the token wants a PIN that has not been asked for yet (the
        event loop asks, then calls again): no prompt for an absent token, and none
        when another store of this process is already logged in to it.
        """
        worker = self._worker
        tok = self._tok
        assert worker is not None
        lib = worker.load()
        token = None
        lookup_error: Exception | None = None
        stale = worker.lookups > 0
        try:
            worker.lookups += 1
            token = find_token(lib, tok.selector)
        except p11e.PKCS11Error as exc:
            lookup_error = exc
        if token is None and (stale or automatic):
            # SoftHSM (and some other modules) only see tokens created, re-created or
            # re-inserted since C_Initialize after C_Finalize + C_Initialize.
            worker.reinitialize()
            worker.lookups += 1
            token = find_token(lib, tok.selector)
        elif lookup_error is not None:
            raise lookup_error
        if token is None:
            raise TokenAbsent(f"{tok.describe()} not present in {worker.path}")

        slot_id = token.slot.slot_id
        flags = token.flags
        logged_in = False
        if worker.logins.get(slot_id):
            # Another store of this process is logged in to this token; PKCS#11 login
            # state is per application, so this session is logged in too.
            session = token.open()
            logged_in = True
            worker.logins[slot_id] += 1
        elif pin is None and self._pin.asks:
            raise _NeedPin(token.label, serial_of(token))
        elif pin is None:
            session = token.open()
        elif flags & TokenFlag.USER_PIN_LOCKED:
            raise PinProblem("user PIN is locked on the token; not logging in")
        elif flags & TokenFlag.USER_PIN_FINAL_TRY and automatic:
            raise PinProblem(
                "one PIN try left on the token; not logging in automatically "
                "(check the pin and send SIGHUP)"
            )
        else:
            tok.login_attempts += 1
            try:
                session = token.open(user_pin=pin)
            except WRONG_PIN_ERRORS:
                raise PinProblem(WRONG_PIN) from None
            except PIN_UNUSABLE_ERRORS as exc:
                raise PinProblem(pin_unusable(exc)) from None
            except p11e.UserAlreadyLoggedIn:
                session = token.open()
            logged_in = True
            worker.logins[slot_id] = worker.logins.get(slot_id, 0) + 1
        try:
            keys, skipped = list_keys(session, token)
        except BaseException:
            close_session(worker, session, slot_id, logged_in)
            raise
        return _Found(
            session=session,
            token=token,
            slot_id=slot_id,
            label=token.label,
            serial=serial_of(token),
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
                await worker.call(close_session, worker, session, slot_id, logged_in)
        tok.logged_in = False


def _sign_sync(key: _Key, payload: bytes, pin: str | None) -> bytes:
    """Module thread: one C_SignInit + C_Sign (with a context-specific login for a
    CKA_ALWAYS_AUTHENTICATE key, e.g. PIV slot 9c)."""
    if key.always_authenticate:
        result: bytes = key.obj.sign(payload, mechanism=key.mechanism, pin=pin)
    else:
        result = key.obj.sign(payload, mechanism=key.mechanism)
    return result


def _now_ms() -> int:
    return int(time.time() * 1000)
