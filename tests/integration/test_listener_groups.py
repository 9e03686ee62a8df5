"""Listener groups mean what users think: a listener with `group: G` admits G's members
(primary or supplementary, as the kernel's permission check counts them) unless
`peers` narrows it; user and group names work wherever ids do.

Sockets are mode 0666 here so the kernel lets everyone connect and the agent's own
peer check (SO_PEERCRED + /proc groups) is what decides. Peers are real processes
under other uids/gids (setpriv)."""

from __future__ import annotations

import grp
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import fingerprint_of, keygen, require_tool, run, running_agent

pytestmark = pytest.mark.openssh

NOBODY = 65534
GROUP = "users"  # present on Debian and most distros (gid 100)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "setpriv")
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        pytest.skip(f"no group {GROUP!r} on this host")


@pytest.fixture()
def shared_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="secretivex-groups-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        subprocess.run(["rm", "-rf", str(d)], check=False)


def ssh_add_as(sock: Path, env: dict[str, str], gid: int, groups: str | None) -> str | None:
    """`ssh-add -l` as uid 65534 with primary gid ``gid`` and supplementary ``groups``;
    the listing, or None when the agent refused."""
    argv = ["setpriv", "--reuid", str(NOBODY), "--regid", str(gid)]
    argv += ["--groups", groups] if groups else ["--clear-groups"]
    proc = run(
        [*argv, "ssh-add", "-l"],
        env=dict(env, SSH_AUTH_SOCK=str(sock), HOME="/"),
        check=False,
    )
    if proc.returncode == 0:
        return proc.stdout
    # refused: the agent closes the connection (ssh-add reports it, or dies of SIGPIPE)
    assert proc.returncode in (1, 2, -13), (proc.returncode, proc.stderr)
    return None


def test_group_members_admitted_and_peers_narrow(tmp_path: Path, shared_dir: Path) -> None:
    gid = grp.getgrnam(GROUP).gr_gid
    keygen(tmp_path, "team", "ed25519", comment="team-key")
    fp = fingerprint_of(tmp_path / "team.pub")
    team = shared_dir / "team.sock"
    narrow = shared_dir / "narrow.sock"
    by_name = shared_dir / "byname.sock"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{tmp_path / 'team'}]\n"
        "listeners:\n"
        # group by name, no peers: members are admitted
        f"  - socket: {team}\n    mode: '0666'\n    group: {GROUP}\n"
        # the same group, narrowed by peers to one other uid
        f"  - socket: {narrow}\n    mode: '0666'\n    group: {GROUP}\n"
        "    peers: {uids: [12345]}\n"
        # peers by name: the group name in peers.gids, a user name in peers.uids
        f"  - socket: {by_name}\n    mode: '0666'\n"
        f"    peers: {{uids: [nobody], gids: [{GROUP}]}}\n"
    )
    with running_agent(tmp_path, "--config", str(config)) as agent:
        env = agent.env
        primary = ssh_add_as(team, env, gid, None)
        supplementary = ssh_add_as(team, env, NOBODY, str(gid))
        outsider = ssh_add_as(team, env, NOBODY, None)
        assert primary is not None and fp in primary
        assert supplementary is not None and fp in supplementary
        assert outsider is None
        # the socket file carries the group, resolved from its name
        assert team.stat().st_gid == gid

        assert ssh_add_as(narrow, env, gid, None) is None
        assert ssh_add_as(narrow, env, NOBODY, str(gid)) is None

        assert ssh_add_as(by_name, env, NOBODY, None) is not None  # uid nobody, by name
        listing = ssh_add_as(by_name, env, gid, None)  # gid by name
        assert listing is not None and fp in listing


def test_unknown_names_are_config_errors_with_their_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "listeners:\n"
        "  - socket: /tmp/sx-unused.sock\n"
        "    peers:\n"
        "      uids: [no-such-user-sx]\n"
        "      gids: [no-such-group-sx]\n"
    )
    cli = str(Path(sys.executable).with_name("secretivex"))
    proc = run([cli, "config", "validate", str(config)], check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert f"{config}:4: listeners[0].peers.uids[0]: no user named 'no-such-user-sx'" in out
    assert f"{config}:5: listeners[0].peers.gids[0]: no group named 'no-such-group-sx'" in out
    assert "Traceback" not in out
