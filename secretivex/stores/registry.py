"""All stores behind one listing: stable order, duplicates collapsed, signs routed by blob."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from secretivex.stores.base import Identity, KeyStore, StoreHealth
from secretivex.stores.memory import MemoryStore

log = logging.getLogger(__name__)


class StoreRegistry:
    """Configured stores first (config order), then the ssh-add memory store, then
    smartcard stores added with ``ssh-add -s``. The first store listing a blob owns it.

    ``ssh-add`` through the main socket of a key that another store also serves (the
    zero-config agent serves ``~/.ssh``) acts as OpenSSH's re-add: the key keeps its
    place, comment and store, and takes the added copy's constraints (``-c``, ``-h``);
    once an explicit ``-t`` lifetime runs out it is withheld from every store until it
    is added again (``MemoryStore.lapsed``).
    """

    def __init__(self, stores: Sequence[KeyStore] = (), memory: MemoryStore | None = None) -> None:
        self.configured: list[KeyStore] = list(stores)
        self.memory = memory or MemoryStore()
        self.smartcards: list[KeyStore] = []
        self._cache_key: tuple[Any, ...] = ()
        self._listing: tuple[Identity, ...] = ()
        self._owners: dict[bytes, tuple[KeyStore, Identity]] = {}

    @property
    def stores(self) -> list[KeyStore]:
        return [*self.configured, self.memory, *self.smartcards]

    def _versions(self) -> tuple[Any, ...]:
        return tuple((id(s), s.version) for s in self.stores)

    async def identities(self) -> tuple[Identity, ...]:
        """The merged listing; recomputed only when some store's ``version`` moved.

        Never waits on I/O: every store answers ``identities`` from memory and refreshes
        in its ``maintain`` (an upstream agent that hangs must not delay other stores).
        """
        if not self.listing_fresh():
            listing: list[Identity] = []
            owners: dict[bytes, tuple[KeyStore, Identity]] = {}
            memory = self.memory
            memory_ids = await memory.identities()
            added = {i.blob: i for i in memory_ids if not i.origin}
            lapsed = memory.lapsed
            for store in self.stores:
                try:
                    ids = memory_ids if store is memory else await store.identities()
                except Exception as exc:  # a store fault must never break listing
                    log.warning("store %s: listing failed: %s", store.name, exc)
                    continue
                for ident in ids:
                    blob = ident.blob
                    if blob in owners:
                        continue
                    if store is not memory:
                        if blob in lapsed:
                            continue
                        overlay = added.get(blob)
                        if overlay is not None:
                            # Constraints only add: a store's own confirm stays.
                            ident = replace(
                                ident,
                                confirm=ident.confirm or overlay.confirm,
                                constraints=ident.constraints + overlay.constraints,
                            )
                    owners[blob] = (store, ident)
                    listing.append(ident)
            self._listing = tuple(listing)
            self._owners = owners
            self._cache_key = self._versions()
        return self._listing

    async def owner(self, blob: bytes) -> tuple[KeyStore, Identity] | None:
        await self.identities()
        return self._owners.get(blob)

    def listing_fresh(self) -> bool:
        """Whether the cached listing is current (no store changed, no lifetime to
        check): then :meth:`listing_now` and :meth:`owner_now` answer without awaiting."""
        return not self.memory.expiring() and self._versions() == self._cache_key

    def listing_now(self) -> tuple[Identity, ...] | None:
        """The merged listing if it is current, else None (await :meth:`identities`)."""
        return self._listing if self.listing_fresh() else None

    def owner_now(self, blob: bytes) -> tuple[KeyStore, Identity] | None:
        """Who owns ``blob`` in the current listing (check :meth:`listing_fresh` first)."""
        return self._owners.get(blob)

    def is_removable(self, store: KeyStore) -> bool:
        return store is self.memory

    async def served_elsewhere(self, blob: bytes) -> str | None:
        """The name of a store other than the memory store that holds ``blob`` (withheld
        or not), or None."""
        for store in (*self.configured, *self.smartcards):
            try:
                ids = await store.identities()
            except Exception as exc:  # a faulty store holds nothing it can serve
                log.debug("store %s: listing failed: %s", store.name, exc)
                continue
            if any(i.blob == blob for i in ids):
                return store.name
        return None

    def health(self) -> list[StoreHealth]:
        return [s.health() for s in self.stores]
