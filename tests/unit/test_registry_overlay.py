"""``ssh-add`` of a key a configured store also serves (the zero-config agent serves
``~/.ssh``): the added copy's constraints apply to the served key, as OpenSSH's re-add
does, and an explicit lifetime that runs out withholds the key from every store until
it is added again. A real file store over a real key file, the real memory store.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from secretivex import protocol
from secretivex.keys.files import load_private_key_file
from secretivex.stores.file import FileStore
from secretivex.stores.registry import StoreRegistry

ONLY_THERE = protocol.DestinationConstraints(
    (
        protocol.DestinationConstraint(
            protocol.Hop(),
            protocol.Hop(hostname="build.example", keys=(protocol.HopKey(b"\0" * 51),)),
        ),
    )
)


def _key_file(directory: Path, comment: str) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path = directory / "id_ed25519"
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    path.with_suffix(".pub").write_bytes(public + f" {comment}\n".encode())
    return path


async def _registry(tmp_path: Path) -> tuple[StoreRegistry, Path]:
    path = _key_file(tmp_path, "from-disk")
    store = FileStore("home", [path])
    await store.open()
    return StoreRegistry([store]), path


def test_an_added_copy_lends_its_constraints_to_the_served_key(tmp_path: Path) -> None:
    async def main() -> None:
        registry, path = await _registry(tmp_path)
        (served,) = await registry.identities()
        assert not served.confirm and not served.constraints
        copy = load_private_key_file(path)
        registry.memory.add(copy, "added", confirm=True, constraints=(ONLY_THERE,))
        (listed,) = await registry.identities()
        # Same place, store and comment (scopes that match on them still match) ...
        assert (listed.blob, listed.store, listed.comment) == (served.blob, "home", "from-disk")
        # ... with the copy's constraints.
        assert listed.confirm and listed.constraints == (ONLY_THERE,)
        found = await registry.owner(served.blob)
        assert found is not None and found[0].name == "home" and found[1] == listed
        # Removing the copy gives the key back as configured.
        assert registry.memory.remove(served.blob, origin="")
        (again,) = await registry.identities()
        assert not again.confirm and not again.constraints

    anyio.run(main)


def test_a_copy_from_a_scoped_socket_lends_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        registry, path = await _registry(tmp_path)
        registry.memory.add(
            load_private_key_file(path), "theirs", confirm=True, origin="/run/ci.sock"
        )
        (listed,) = await registry.identities()
        assert listed.store == "home" and not listed.confirm
        assert await registry.served_elsewhere(listed.blob) == "home"

    anyio.run(main)


@pytest.mark.parametrize("explicit", [True, False])
def test_a_lifetime_that_runs_out_withholds_the_served_key(tmp_path: Path, explicit: bool) -> None:
    """An explicit ``ssh-add -t`` (``lapses``) withholds the key once it expires, until
    it is added again; the agent's default lifetime (not asked for in the add) does
    not take a configured key away."""

    async def main() -> None:
        registry, path = await _registry(tmp_path)
        (served,) = await registry.identities()
        registry.memory.add(load_private_key_file(path), "added", lifetime_s=1, lapses=explicit)
        assert [i.blob for i in await registry.identities()] == [served.blob]
        deadline = time.monotonic() + 5
        while registry.memory.local_key(served.blob) is not None:
            assert time.monotonic() < deadline
            await registry.identities()  # expires the copy when due
            await anyio.sleep(0.05)
        listing = await registry.identities()
        if not explicit:
            assert [i.blob for i in listing] == [served.blob]
            return
        assert listing == ()
        assert await registry.owner(served.blob) is None
        assert await registry.served_elsewhere(served.blob) == "home"
        registry.memory.add(load_private_key_file(path), "again")
        assert [i.blob for i in await registry.identities()] == [served.blob]

    anyio.run(main)
