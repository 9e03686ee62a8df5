"""Item 4: the agent refuses to serve a socket from a directory another uid controls.

A directory another uid owns (or can write without the sticky bit) lets that uid
rename the agent's socket away and bind its own in its place: the owner's next
`ssh-add` then hands the private key to the attacker. The agent must refuse to start
there (exit 1, one line naming the directory and why)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from harness import SECRETIVEX, require_tool, run, start_agent
from sec_d_helpers import NOBODY, as_uid, shared_dir, stderr_lines


def _start(tmp: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    """Run the agent in the foreground on ``sock``; it must exit by itself (refusal)."""
    home = tmp / "home"
    home.mkdir(exist_ok=True, mode=0o700)
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env.pop("SECRETIVEX_CONFIG", None)
    env.pop("XDG_RUNTIME_DIR", None)
    return subprocess.run(
        [SECRETIVEX, "agent", "--socket", str(sock)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def _assert_refused(proc: subprocess.CompletedProcess[str], directory: Path, why: str) -> None:
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in lines if line.startswith("secretivex:")]
    assert len(errors) == 1, proc.stderr
    assert all(" INFO " in line for line in lines if line not in errors), proc.stderr
    assert str(directory) in errors[0] and why in errors[0], errors


def test_directory_precreated_by_another_uid_is_refused(tmp_path: Path) -> None:
    require_tool("setpriv")
    with shared_dir(0o1777) as base:
        attacker_dir = base / "secretivex"
        run([*as_uid(NOBODY), "mkdir", "-m", "0755", str(attacker_dir)])
        sock = attacker_dir / "agent.sock"
        proc = _start(tmp_path, sock)
        _assert_refused(proc, attacker_dir, f"owned by uid {NOBODY}")
        assert not sock.exists()

        # The impact the refusal prevents: in its own directory the attacker can move
        # any socket the agent would bind there and put its own in its place.
        victim = socket.socket(socket.AF_UNIX)
        try:
            victim.bind(str(sock))
            victim.listen(1)
            moved = attacker_dir / "moved.sock"
            run([*as_uid(NOBODY), "mv", str(sock), str(moved)])
            assert moved.exists() and not sock.exists()
        finally:
            victim.close()


def test_symlinked_directory_is_refused(tmp_path: Path) -> None:
    require_tool("setpriv")
    with shared_dir(0o1777) as base:
        target = base / "attacker-owned"
        run([*as_uid(NOBODY), "mkdir", "-m", "0700", str(target)])
        link = base / "secretivex"
        run([*as_uid(NOBODY), "ln", "-s", str(target), str(link)])
        proc = _start(tmp_path, link / "agent.sock")
        _assert_refused(proc, link, "symlink")
        assert not any(target.iterdir())

        # A symlink to a directory the agent's own uid owns is refused all the same:
        # whoever owns the link decides where it points.
        own = tmp_path / "own"
        own.mkdir(mode=0o700)
        own_link = tmp_path / "own-link"
        own_link.symlink_to(own)
        _assert_refused(_start(tmp_path, own_link / "agent.sock"), own_link, "symlink")


def test_group_writable_directory_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o775)
    _assert_refused(_start(tmp_path, loose / "agent.sock"), loose, "writable")
    world = tmp_path / "world"
    world.mkdir()
    world.chmod(0o777)
    _assert_refused(_start(tmp_path, world / "agent.sock"), world, "writable")


def test_sticky_world_writable_and_owner_only_directories_are_served(tmp_path: Path) -> None:
    with shared_dir(0o1777) as tmp_like:  # like /tmp: others cannot rename our socket
        agent = start_agent(tmp_path, socket_path=tmp_like / "agent.sock")
        try:
            assert agent.ssh_add("-l", check=False).returncode == 1  # no identities
            if Path("/usr/bin/setpriv").exists():
                moved = run(
                    [*as_uid(NOBODY), "mv", str(agent.socket), str(tmp_like / "x.sock")],
                    check=False,
                )
                assert moved.returncode != 0 and agent.socket.exists()
        finally:
            assert agent.stop() == 0
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    agent = start_agent(tmp_path, socket_path=private / "agent.sock")
    try:
        assert agent.ssh_add("-l", check=False).returncode == 1
    finally:
        assert agent.stop() == 0


def test_default_directory_is_created_owner_only(tmp_path: Path) -> None:
    parent = tmp_path / "runtime"
    parent.mkdir(mode=0o700)
    sock = parent / "secretivex" / "agent.sock"
    agent = start_agent(tmp_path, socket_path=sock)
    try:
        st = sock.parent.lstat()
        assert st.st_uid == os.getuid()
        assert st.st_mode & 0o7777 == 0o700
    finally:
        agent.stop()
