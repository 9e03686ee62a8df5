"""Item 5: a forwarded agent connection lists only the keys its hops permit.

Attacker: root (or the same uid) on a host the user logs into with ``ssh -A``, reading
the forwarded agent. Keys added with ``ssh-add -h`` for that host only, or for other
hosts, must not even be listed there — as OpenSSH's agent filters them in
``process_request_identities``. The same session runs against OpenSSH's ssh-agent in
the same test and must list the same keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Sshd, keygen, require_tool, run, running_agent, start_sshd
from sec_c_helpers import fp_of, openssh_agent, shared_dir

pytestmark = pytest.mark.openssh


@pytest.fixture()
def hop(tmp_path: Path) -> Iterator[tuple[Sshd, dict[str, Path]]]:
    require_tool("ssh", "ssh-add", "ssh-keygen", "/usr/sbin/sshd")
    keys = {
        "plain": keygen(tmp_path, "plain", comment="plain"),
        "hop_only": keygen(tmp_path, "hop_only", comment="hop-only"),
        "beyond": keygen(tmp_path, "beyond", comment="hop-and-beyond"),
        "elsewhere": keygen(tmp_path, "elsewhere", comment="elsewhere-only"),
    }
    server = start_sshd(tmp_path, [keys["plain"].with_suffix(".pub").read_text().strip()])
    try:
        yield server, keys
    finally:
        server.proc.terminate()
        server.proc.wait(10)


def _known_hosts(tmp: Path, server: Sshd) -> Path:
    nxt = keygen(tmp, "next_host", comment="next-host")
    known = tmp / "known_hosts_dest"
    known.write_text(
        f"hop {' '.join(server.host_key_pub.read_text().split()[:2])}\n"
        f"next {' '.join(nxt.with_suffix('.pub').read_text().split()[:2])}\n"
    )
    return known


def _load(env: dict[str, str], keys: dict[str, Path], known: Path) -> None:
    add = ["ssh-add", "-q", "-H", str(known)]
    run(["ssh-add", "-q", str(keys["plain"])], env=env)
    run([*add, "-h", "hop", str(keys["hop_only"])], env=env)
    run([*add, "-h", "hop", "-h", "hop>next", str(keys["beyond"])], env=env)
    run([*add, "-h", "next", str(keys["elsewhere"])], env=env)


def _remote_listing(env: dict[str, str], server: Sshd, known: Path) -> set[str]:
    """``ssh -A hop ssh-add -l``: what the remote side sees through the forwarded agent."""
    ssh = server.ssh_argv("-A", "-o", "HostKeyAlias=hop", known_hosts=known)
    argv = [*ssh, "ssh-add -l; echo rc=$?"]
    out = run(argv, env=env, check=False)
    assert "rc=" in out.stdout, out.stderr
    return {line.split()[1] for line in out.stdout.splitlines() if line.startswith("256 ")}


def test_forwarded_listing_hides_keys_not_permitted_beyond_the_hop(
    tmp_path: Path, hop: tuple[Sshd, dict[str, Path]]
) -> None:
    server, keys = hop
    known = _known_hosts(tmp_path, server)
    fps = {name: fp_of(path.with_suffix(".pub")) for name, path in keys.items()}
    expected = {fps["plain"], fps["beyond"]}

    config = tmp_path / "c.yaml"
    config.write_text("stores: []\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        env = dict(agent.env)
        _load(env, keys, known)
        # Locally (unbound connection) every key is listed, as OpenSSH does.
        local = run(["ssh-add", "-l"], env=env).stdout
        assert all(fp in local for fp in fps.values())
        ours = _remote_listing(env, server, known)

    with shared_dir() as d, openssh_agent(d) as sock:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AGENT_PID"}
        env["SSH_AUTH_SOCK"] = str(sock)
        _load(env, keys, known)
        theirs = _remote_listing(env, server, known)

    assert theirs == expected, (theirs, fps)
    assert ours == theirs, (ours, fps)
