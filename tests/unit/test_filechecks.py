"""config.filechecks: the rules for files the agent appends to (audit.path, --log-file)
and for config files, on real files, links, FIFOs and (as root) other owners."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from secretivex.agent.audit import AuditLog, AuditPathError
from secretivex.cli import daemon
from secretivex.config.filechecks import (
    UnsafePathError,
    check_append,
    config_file_owner_problem,
    config_file_write_problem,
    directory_problem,
    open_append,
)

NOBODY = 65534


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another uid")


def _refused(path: Path, *words: str) -> str:
    """open_append refuses, check_append says the same, and the message names path."""
    with pytest.raises(UnsafePathError) as caught:
        open_append(path)
    message = str(caught.value)
    assert check_append(path) == message
    for word in (str(path.parent), *words):
        assert word in message, message
    assert "\n" not in message
    return message


def test_a_new_file_is_created_owner_only_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert check_append(path) is None
    assert not path.exists(), "check_append must create nothing"
    old = os.umask(0)
    try:
        fd = open_append(path)
    finally:
        os.umask(old)
    try:
        os.write(fd, b"one\n")
        assert os.get_blocking(fd), "O_NONBLOCK (for opening a FIFO safely) left set"
        assert not os.get_inheritable(fd), "the fd would leak into confirm hooks"
    finally:
        os.close(fd)
    fd = open_append(path)
    os.write(fd, b"two\n")
    os.close(fd)
    assert path.read_text() == "one\ntwo\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert check_append(path) is None


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    link = tmp_path / "audit.jsonl"
    link.symlink_to(victim)
    assert "is a symlink" in _refused(link)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "would-be-created")
    assert "is a symlink" in _refused(dangling)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "would-be-created").exists()


def test_a_second_hard_link_is_refused(tmp_path: Path) -> None:
    """With fs.protected_hardlinks=0, whoever can write a sticky directory can link any
    file there; the agent would append to it (as root: to /etc/shadow)."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    link = tmp_path / "audit.jsonl"
    os.link(victim, link)
    assert "2 hard links" in _refused(link)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_file_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(mode)
    assert f"mode {mode:04o}" in _refused(path, "group/other-writable")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    os.mkfifo(path, 0o600)
    done = threading.Event()

    def attempt() -> None:
        _refused(path, "FIFO")
        done.set()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(5)
    assert done.is_set(), "opening a planted FIFO blocked"


def test_a_directory_or_missing_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert "is a directory" in _refused(tmp_path / "dir")
    missing = tmp_path / "no-such-dir" / "audit.jsonl"
    assert "does not exist" in _refused(missing)
    assert not missing.parent.exists()


def test_a_directory_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "logs"
    shared.mkdir()
    shared.chmod(0o775)
    _refused(shared / "audit.jsonl", "group/other-writable (mode 0775) without the sticky bit")
    shared.chmod(0o1777)  # /tmp-like: nobody can replace our file, links are refused
    fd = open_append(shared / "audit.jsonl")
    os.close(fd)


def test_a_directory_or_file_of_another_uid_is_refused(tmp_path: Path) -> None:
    _need_root()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    _refused(theirs / "audit.jsonl", f"owned by uid {NOBODY}")
    assert not (theirs / "audit.jsonl").exists()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = sticky / "audit.jsonl"
    planted.write_text("")
    planted.chmod(0o600)
    os.chown(planted, NOBODY, NOBODY)
    _refused(planted, f"owned by uid {NOBODY}, not by this agent's uid 0")


def test_directory_rule() -> None:
    def st(mode: int, uid: int) -> os.stat_result:
        return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))

    me = os.geteuid()
    assert directory_problem(st(stat.S_IFDIR | 0o755, me)) is None
    assert directory_problem(st(stat.S_IFDIR | 0o755, 0)) is None
    assert directory_problem(st(stat.S_IFDIR | 0o1777, 0)) is None
    assert "without the sticky bit" in (directory_problem(st(stat.S_IFDIR | 0o777, 0)) or "")
    assert "owned by uid 4242" in (directory_problem(st(stat.S_IFDIR | 0o700, 4242)) or "")


def test_config_file_rules() -> None:
    def st(mode: int, uid: int) -> os.stat_result:
        return os.stat_result((stat.S_IFREG | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))

    me = os.geteuid()
    assert config_file_write_problem(st(0o644, me), "c.yaml") is None
    assert config_file_write_problem(st(0o444, 0), "c.yaml") is None
    group = config_file_write_problem(st(0o664, me), "c.yaml") or ""
    assert "writable by its group (mode 0664)" in group and "chmod go-w c.yaml" in group
    world = config_file_write_problem(st(0o646, me), "c.yaml") or ""
    assert "writable by other users (mode 0646)" in world
    assert config_file_owner_problem(st(0o644, me)) is None
    assert config_file_owner_problem(st(0o644, 0)) is None
    assert "owned by uid 4242" in (config_file_owner_problem(st(0o644, 4242), euid=me) or "")


def test_the_audit_log_opens_through_these_rules(tmp_path: Path) -> None:
    """Also on a reload, which opens the new audit.path in the running agent."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(victim)
    with pytest.raises(AuditPathError, match=r"^audit\.path: .*is a symlink"):
        AuditLog(str(link))
    assert victim.read_text() == "precious\n"
    good = AuditLog(str(tmp_path / "good.jsonl"))
    good.record(request="list", outcome="ok")
    good.close()
    assert '"request":"list"' in (tmp_path / "good.jsonl").read_text()


def test_the_daemon_log_file_opens_through_these_rules(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "agent.log"
    link.symlink_to(victim)
    with pytest.raises(daemon.LogFileError, match=r"^--log-file: .*is a symlink") as caught:
        daemon._open_log(link)
    assert caught.value.exit_code == 2
    os.close(daemon._open_log(tmp_path / "fine.log"))
