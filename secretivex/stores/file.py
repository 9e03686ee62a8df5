"""Keys from OpenSSH private key files and directories (``~/.ssh`` by default)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from secretivex.keys import KeyLoadError, SoftwareKey, load_private_key_file, looks_like_private_key
from secretivex.keys.files import may_be_key_file
from secretivex.stores.base import (
    Identity,
    KeyStore,
    SignError,
    StoreHealth,
    StoreState,
    sign_locally,
)
from secretivex.stores.secrets import warn_if_exposed

log = logging.getLogger(__name__)

PassphraseSource = Callable[[], bytes | None]


def _candidate_files(path: Path) -> list[Path]:
    """Files to load: ``path`` itself, or the private keys in a directory, plus every
    file there the agent cannot read (it might be a key: the load names it)."""
    if path.is_dir():
        out = []
        for child in sorted(path.iterdir()):
            if not may_be_key_file(child):
                continue
            if child.is_file() and (looks_like_private_key(child) or _unreadable(child)):
                out.append(child)
        return out
    return [path]


def _unreadable(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return False
    except PermissionError:
        return True
    except OSError:
        return False


def _why_unreadable(path: Path) -> str:
    """Mode and owner of a file the agent may not read, and who the agent is."""
    try:
        st = path.stat()
    except OSError:
        return ""
    return (
        f" (mode {st.st_mode & 0o7777:04o}, owner {st.st_uid}:{st.st_gid}; "
        f"the agent runs as uid {os.geteuid()})"
    )


class FileStore(KeyStore):
    """Loads every private key under ``paths`` once; SIGHUP (``reload``) re-reads them.

    A key that cannot be loaded is skipped with a warning naming the file, so one bad
    file never takes the other keys away.
    """

    kind = "file"

    def __init__(
        self,
        name: str,
        paths: Sequence[str | os.PathLike[str]],
        passphrase: PassphraseSource | None = None,
    ) -> None:
        super().__init__(name)
        self.paths = [Path(os.path.expanduser(str(p))) for p in paths]
        self._passphrase = passphrase or (lambda: None)
        self._keys: dict[bytes, SoftwareKey] = {}
        self._listing: tuple[Identity, ...] = ()
        self._problems: list[str] = []

    def _load_all(self) -> tuple[dict[bytes, SoftwareKey], list[str]]:
        keys: dict[bytes, SoftwareKey] = {}
        problems: list[str] = []
        passphrase: bytes | None = None
        passphrase_read = False
        for root in self.paths:
            if not root.exists():
                if root.name != ".ssh":
                    problems.append(f"{root}: no such file or directory")
                continue
            try:
                files = _candidate_files(root)
            except OSError as exc:
                problems.append(f"{root}: {exc.strerror or exc}")
                continue
            for path in files:
                warn_if_exposed(path, "private key file")
                try:
                    try:
                        key = load_private_key_file(path, None)
                    except KeyLoadError:
                        if not passphrase_read:
                            passphrase, passphrase_read = self._passphrase(), True
                        if passphrase is None:
                            raise
                        key = load_private_key_file(path, passphrase)
                except (KeyLoadError, OSError) as exc:
                    reason = str(exc)
                    if _unreadable(path):
                        reason += _why_unreadable(path)
                    problems.append(reason)
                    continue
                keys.setdefault(key.public_blob, key)
        return keys, problems

    async def open(self) -> None:
        keys, problems = await anyio.to_thread.run_sync(self._load_all)
        self._keys = keys
        self._problems = problems
        for problem in problems:
            log.warning("store %s: skipped %s", self.name, problem)
        self._listing = tuple(
            Identity(blob=k.public_blob, comment=k.comment, store=self.name, key_type=k.key_type)
            for k in keys.values()
        )
        self._changed()
        log.info(
            "store %s: %d key(s) from %s",
            self.name,
            len(keys),
            ", ".join(str(p) for p in self.paths),
        )

    async def reload(self) -> None:
        await self.open()

    async def aclose(self) -> None:
        self._keys = {}
        self._listing = ()
        self._changed()

    async def identities(self) -> Sequence[Identity]:
        return self._listing

    def local_key(self, blob: bytes) -> SoftwareKey | None:
        return self._keys.get(blob)

    async def sign(self, blob: bytes, data: bytes, flags: int) -> bytes:
        key = self._keys.get(blob)
        if key is None:
            raise SignError("key not in file store")
        return sign_locally(key, data, flags)

    def health(self) -> StoreHealth:
        return StoreHealth(
            self.name,
            self.kind,
            StoreState.OK,
            len(self._keys),
            last_error=self._problems[-1] if self._problems else None,
            detail={"paths": [str(p) for p in self.paths], "skipped": list(self._problems)},
        )
