"""Supplementary groups of a peer come from the socket (``SO_PEERGROUPS``, the kernel's
copy taken at ``connect()``), not from ``/proc/PID/status`` read later: the answer
cannot change when the peer exits and its pid is reused, and needs no visible /proc.
Real processes and real sockets; setting groups needs root."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from secretivex.policy.peer import PeerCredentials, peer_credentials, proc_groups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set groups")


@contextlib.contextmanager
def _peer_with_groups(
    tmp_path: Path, groups: list[int], *, stays: bool
) -> Iterator[tuple[socket.socket, int]]:
    """A forked child with ``groups`` connects to a fresh socket; yields the accepted
    connection and the child's pid. The child exits at once (``stays=False``: it has
    exited before the yield) or waits until the block ends."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setgroups(groups)
                client = socket.socket(socket.AF_UNIX)
                client.connect(str(path))
                if stays:
                    os.read(read_end, 1)  # until the parent has looked
            finally:
                os._exit(0)
        if not stays:
            os.waitpid(pid, 0)
        try:
            conn, _ = server.accept()
            with conn:
                yield conn, pid
        finally:
            os.write(write_end, b"x")
            if stays:
                os.waitpid(pid, 0)
            os.close(read_end)
            os.close(write_end)


def test_groups_are_the_ones_at_connect_even_after_the_peer_exited(tmp_path: Path) -> None:
    groups = list(range(40000, 40256))  # as many as SO_PEERGROUPS is read for
    with _peer_with_groups(tmp_path, groups, stays=False) as (conn, pid):
        peer = peer_credentials(conn)
        assert peer.pid == pid
        assert proc_groups(pid) == frozenset()  # gone: /proc can no longer say
        assert peer.groups() == frozenset(groups)


def test_a_peer_in_more_groups_is_read_from_proc(tmp_path: Path) -> None:
    """More than 256 groups: the socket's copy does not fit CPython's getsockopt
    buffer, so /proc says (here: the peer is still running)."""
    groups = list(range(40000, 40300))
    with _peer_with_groups(tmp_path, groups, stays=True) as (conn, _):
        assert peer_credentials(conn).groups() == frozenset(groups)


def test_without_a_socket_groups_come_from_proc() -> None:
    me = PeerCredentials(os.getpid(), os.getuid(), os.getgid())
    assert me.groups() == frozenset(os.getgroups())
