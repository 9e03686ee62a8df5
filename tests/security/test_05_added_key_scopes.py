"""Item 5: keys added with ssh-add stay in the scope of the socket they came through,
scoped removals never touch the owner's keys, and the memory store is bounded.

Attacker: another uid admitted by a listener's ``peers.uids`` (via setpriv), using the
real ``ssh-add``; and any client flooding ADD_IDENTITY through the protocol codec.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from harness import keygen, require_tool, run, running_agent
from sec_c_helpers import (
    NOBODY,
    RawAgent,
    as_uid,
    fingerprints,
    flood_adds,
    fp_of,
    give_key,
    openssh_agent,
    shared_dir,
)

from secretivex import protocol

pytestmark = pytest.mark.openssh


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen", "setpriv")


def _two_listeners(tmp: Path, shared: Path, extra: str = "") -> tuple[Path, Path, Path]:
    """Config with two scoped listeners that admit uid 65534, may add keys, and whose
    matchers would match every key; plus the audit log path."""
    a, b = shared / "a.sock", shared / "b.sock"
    audit = tmp / "audit.jsonl"
    config = tmp / "c.yaml"
    listener = "    mode: '0666'\n    peers: {{uids: [{uid}]}}\n    allow_add: true\n"
    config.write_text(
        "stores: []\n"
        f"audit:\n  path: {audit}\n"
        "listeners:\n"
        f"  - socket: {a}\n    keys: ['comment:*']\n"
        + listener.format(uid=NOBODY)
        + f"  - socket: {b}\n    keys: ['comment:*']\n"
        + listener.format(uid=NOBODY)
        + extra
    )
    return config, a, b


def _audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_key_added_through_a_listener_is_seen_there_and_on_main_only(tmp_path: Path) -> None:
    with shared_dir() as shared:
        config, a, b = _two_listeners(tmp_path, shared)
        peer_key = give_key(keygen(tmp_path, "peer", comment="peer-key"), shared)
        fp = fp_of(peer_key.with_suffix(".pub"))
        with running_agent(tmp_path, "--config", str(config)) as agent:
            added = as_uid(["ssh-add", str(peer_key)], dict(agent.env, SSH_AUTH_SOCK=str(a)))
            assert added.returncode == 0, added.stderr
            assert fp in fingerprints(agent.env, a, uid=NOBODY)
            assert fp in fingerprints(agent.env, agent.socket)
            # B's matchers ('comment:*') match it, yet B never sees it ...
            assert fp not in fingerprints(agent.env, b, uid=NOBODY)
            # ... nor signs with it (ssh-keygen -Y sign through B fails, through A works).
            work = shared / "work"
            work.mkdir()
            message = work / "msg"
            message.write_text("hello\n")
            # Only the public key next to the message: ssh-keygen must use the agent.
            pub_only = work / "peer.pub"
            pub_only.write_text(peer_key.with_suffix(".pub").read_text())
            for p in (work, message, pub_only):
                os.chown(p, NOBODY, NOBODY)
            sign = ["ssh-keygen", "-Y", "sign", "-n", "file", "-f"]
            pub = str(pub_only)
            via_b = as_uid([*sign, pub, str(message)], dict(agent.env, SSH_AUTH_SOCK=str(b)))
            assert via_b.returncode != 0
            assert "No private key found" in via_b.stderr  # B does not even list it
            # A sign request naming the key on B is refused (scope_denied in the audit).
            blob = base64.b64decode(pub_only.read_text().split()[1])
            raw = RawAgent(b)
            try:
                reply = raw.request(protocol.SignRequest(blob, b"data", 0))
            finally:
                raw.close()
            assert reply == bytes([protocol.SSH_AGENT_FAILURE])
            via_a = as_uid([*sign, pub, str(message)], dict(agent.env, SSH_AUTH_SOCK=str(a)))
            assert via_a.returncode == 0, via_a.stderr
            # Re-adding the same key through B cannot take it over.
            stolen = as_uid(["ssh-add", str(peer_key)], dict(agent.env, SSH_AUTH_SOCK=str(b)))
            assert stolen.returncode != 0
            assert fp not in fingerprints(agent.env, b, uid=NOBODY)
            assert fp in fingerprints(agent.env, a, uid=NOBODY)
        outcomes = {(r["request"], r["outcome"]) for r in _audit(tmp_path / "audit.jsonl")}
        assert ("sign", "scope_denied") in outcomes
        assert ("add", "add_refused") in outcomes


def test_scoped_remove_all_and_remove_leave_the_owners_keys(tmp_path: Path) -> None:
    with shared_dir() as shared:
        config, a, _b = _two_listeners(tmp_path, shared)
        owner_key = keygen(tmp_path, "owner", comment="owner-key")
        owner_pub = shared / "owner.pub"
        owner_pub.write_text(owner_key.with_suffix(".pub").read_text())
        owner_pub.chmod(0o644)
        peer_key = give_key(keygen(tmp_path, "peer", comment="peer-key"), shared)
        owner_fp, peer_fp = fp_of(owner_pub), fp_of(peer_key.with_suffix(".pub"))
        with running_agent(tmp_path, "--config", str(config)) as agent:
            agent.ssh_add(str(owner_key))
            peer_env = dict(agent.env, SSH_AUTH_SOCK=str(a))
            assert as_uid(["ssh-add", str(peer_key)], peer_env).returncode == 0
            # A sees the owner's key (its matchers match it) but may not remove it.
            assert {owner_fp, peer_fp} <= fingerprints(agent.env, a, uid=NOBODY)
            removed = as_uid(["ssh-add", "-d", str(owner_pub)], peer_env)
            assert removed.returncode != 0
            assert owner_fp in fingerprints(agent.env, agent.socket)
            # ssh-add -D through A removes only what was added through A.
            cleared = as_uid(["ssh-add", "-D"], peer_env)
            assert cleared.returncode == 0, cleared.stderr
            on_main = fingerprints(agent.env, agent.socket)
            assert owner_fp in on_main and peer_fp not in on_main
            # The main socket still removes anything.
            assert as_uid(["ssh-add", str(peer_key)], peer_env).returncode == 0
            agent.ssh_add("-D")
            assert fingerprints(agent.env, agent.socket) == set()
        outcomes = [(r["request"], r["outcome"]) for r in _audit(tmp_path / "audit.jsonl")]
        assert ("remove", "remove_refused") in outcomes


def test_memory_store_count_bound_fails_cleanly(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: []\nagent:\n  max_added_keys: 3\naudit:\n  path: {audit}\n")
    keys = [keygen(tmp_path, f"k{i}", comment=f"k{i}") for i in range(8)]
    with running_agent(tmp_path, "--config", str(config)) as agent:
        for key in keys[:3]:
            agent.ssh_add(str(key))
        refused = [agent.ssh_add(str(key), check=False) for key in keys[3:]]
        assert all(r.returncode != 0 for r in refused)
        listed = agent.ssh_add("-l")
        assert len(listed.stdout.splitlines()) == 3
        # Re-adding a key already held (replacing it) is not an add beyond the bound.
        assert agent.ssh_add(str(keys[0])).returncode == 0
        log = agent.log()
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "refusing ssh-add" in line]
    assert len(warnings) == 1, warnings  # one WARNING for the whole burst
    assert "maximum of 3 keys" in warnings[0]
    full = [r for r in _audit(audit) if r["outcome"] == "store_full"]
    assert len(full) == 5


def test_add_flood_never_breaks_listing_and_openssh_breaks(tmp_path: Path) -> None:
    """5,000 adds with 300-byte comments (~1.8 MB of listing): the agent refuses the adds
    that would push its listing past 256 KiB, and ``ssh-add -l`` keeps working. OpenSSH's
    ssh-agent accepts them all and then no client can list its keys."""
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: []\nagent:\n  max_added_keys: 100000\naudit:\n  path: {audit}\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        ok, failed = flood_adds(agent.socket, 5000, comment_len=300)
        assert ok + failed == 5000
        assert 500 < ok < 1000 and failed > 4000
        listed = agent.ssh_add("-l")
        assert len(listed.stdout.splitlines()) == ok
        log = agent.log()
    assert "Traceback" not in log
    assert "fit in one identities answer" in log
    with shared_dir() as d, openssh_agent(d) as theirs:
        ok_theirs, _ = flood_adds(theirs, 5000, comment_len=300)
        assert ok_theirs == 5000
        broken = run(["ssh-add", "-l"], env={"SSH_AUTH_SOCK": str(theirs)}, check=False)
        assert broken.returncode != 0


def test_smartcard_modules_only_through_the_main_socket(tmp_path: Path) -> None:
    """A scoped peer cannot load a PKCS#11 module (its keys would have no scope) nor
    unload the owner's: the request is refused before the module is touched."""
    module = next(
        (
            m
            for m in (
                "/usr/lib/softhsm/libsofthsm2.so",
                "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            )
            if Path(m).exists()
        ),
        "/usr/lib/libnothing-pkcs11.so",  # refused before it is opened either way
    )
    with shared_dir() as shared:
        config, a, _b = _two_listeners(tmp_path, shared)
        askpass = shared / "askpass"
        askpass.write_text("#!/bin/sh\necho 1234\n")
        askpass.chmod(0o755)
        with running_agent(tmp_path, "--config", str(config)) as agent:
            env = dict(
                agent.env,
                SSH_AUTH_SOCK=str(a),
                SSH_ASKPASS=str(askpass),
                SSH_ASKPASS_REQUIRE="force",
                DISPLAY=":0",
            )
            assert as_uid(["ssh-add", "-s", module], env).returncode != 0
            assert as_uid(["ssh-add", "-e", module], env).returncode != 0
            log = agent.log()
    assert "Traceback" not in log
    refused = [
        r
        for r in _audit(tmp_path / "audit.jsonl")
        if r["request"] in ("add_smartcard", "remove_smartcard")
    ]
    assert [r["outcome"] for r in refused] == ["add_refused", "add_refused"]
    assert all("main socket" in str(r["detail"]) for r in refused)


def test_memory_store_byte_bound_fails_cleanly(tmp_path: Path) -> None:
    """Ed25519 entries cost ~450 bytes here: a 1,500-byte store takes three."""
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: []\nagent:\n  max_added_bytes: 1500\naudit:\n  path: {audit}\n")
    keys = [keygen(tmp_path, f"k{i}", comment=f"k{i}") for i in range(5)]
    with running_agent(tmp_path, "--config", str(config)) as agent:
        results = [agent.ssh_add(str(key), check=False).returncode for key in keys]
        assert results == [0, 0, 0, 1, 1]
        assert len(agent.ssh_add("-l").stdout.splitlines()) == 3
        agent.ssh_add("-D")  # freeing room lets adds succeed again
        assert agent.ssh_add(str(keys[4])).returncode == 0
        log = agent.log()
    assert "maximum of 1500 bytes" in log and "Traceback" not in log
    assert [r["outcome"] for r in _audit(audit) if r["outcome"] == "store_full"] == [
        "store_full",
        "store_full",
    ]
