"""What ``ssh-add -s MODULE`` adds: every token of one module that takes the PIN."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from secretivex.stores.base import (
    Identity,
    KeyStore,
    SignError,
    StoreError,
    StoreHealth,
    StoreState,
)
from secretivex.stores.pkcs11.discovery import tokens_sync
from secretivex.stores.pkcs11.errors import describe_error
from secretivex.stores.pkcs11.lifecycle import TokenState
from secretivex.stores.pkcs11.modules import DEFAULT_ALLOWLIST, module_allowed, resolve_module
from secretivex.stores.pkcs11.pins import FixedPin
from secretivex.stores.pkcs11.store import Pkcs11Store
from secretivex.stores.pkcs11.worker import ModuleWorker

log = logging.getLogger(__name__)


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
            for identity in token.listing:
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
            since_unix_ms=max(
                (part.since_unix_ms for part in parts), default=int(time.time() * 1000)
            ),
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
    worker = ModuleWorker.of(canonical)
    try:
        tokens = await worker.call(tokens_sync, worker)
    except Exception as exc:
        raise StoreError(f"cannot use PKCS#11 module {canonical}: {describe_error(exc)}") from None

    secret = FixedPin(pin)
    labels = [label for _, label, _ in tokens]
    stores: list[Pkcs11Store] = []
    problems: list[str] = []
    for _slot_id, label, serial in tokens:
        name = f"smartcard:{label}" if labels.count(label) == 1 else f"smartcard:{label}#{serial}"
        store = Pkcs11Store(name, canonical, token_serial=serial, pin=secret)
        await store.open()
        if store.token_state is TokenState.READY and store.listing:
            stores.append(store)
            continue
        problems.append(f"{label or serial}: {store.fault or 'no usable keys'}")
        log.warning("ssh-add -s %s: leaving out token %r: %s", canonical, label, problems[-1])
        await store.aclose()
    if not stores:
        detail = "; ".join(problems) if problems else "no initialised token"
        raise StoreError(f"no usable keys in {canonical} ({detail})")
    return Pkcs11Smartcard(f"smartcard:{canonical}", canonical, stores)
