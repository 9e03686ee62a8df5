"""Audit sweep findings (AUDIT-REPORT.md): each test shows one defect that is still
there, and fails today for that reason. They use real processes as the rest of
tests/security does: a real agent, the real OpenSSH tools, other uids through setpriv.

A test here passes once the defect is fixed, whichever of the fixes the report
suggests is chosen (e.g. "refuse the add" or "enforce the constraint" both pass).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    SECRETIVEX,
    keygen,
    require_tool,
    run,
    running_agent,
    start_agent,
    wait_for_socket,
)
from sec_c_helpers import (
    NOBODY,
    RawAgent,
    as_uid,
    lying_upstream,
    openssh_agent,
    shared_dir,
)
from sec_d_helpers import as_uid as setpriv_as

from secretivex import protocol

pytestmark = pytest.mark.openssh


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid (setpriv)")
    require_tool("setpriv")


def _home_key(agent_home: Path, comment: str = "home-key") -> Path:
    """A key in the agent's ~/.ssh: served by the zero-config file store."""
    ssh_dir = agent_home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    return keygen(ssh_dir, "id_ed25519", comment=comment)


def _sign_file(env: dict[str, str], key: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    message = tmp / f"msg-{time.monotonic_ns()}"
    message.write_text("hello\n")
    return run(
        [
            "ssh-keygen",
            "-Y",
            "sign",
            "-n",
            "file",
            "-f",
            str(key.with_suffix(".pub")),
            str(message),
        ],
        env=env,
        check=False,
    )


# -- F1: ssh-add constraints on a key a configured store also serves ----------------------


def test_ssh_add_confirm_applies_to_a_key_also_served_from_dot_ssh(tmp_path: Path) -> None:
    """`ssh-add -c ~/.ssh/id_ed25519` on the zero-config agent: ssh-add says "The user
    must confirm each use of the key", the agent logs confirm=True, and then signs
    without asking, because the file store (first in the registry) owns the blob and
    the memory copy carrying the constraint is never consulted. OpenSSH asks (and with
    an askpass that says no, refuses)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = _home_key(home)
    deny = {"SSH_ASKPASS": "/bin/false", "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    # OpenSSH: with -c, a "no" from askpass refuses the signature.
    with shared_dir() as d:
        env_o = dict(os.environ, **deny)
        proc = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(d / "o.sock")],
            env=env_o,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_socket(d / "o.sock", proc=proc)
            env_o["SSH_AUTH_SOCK"] = str(d / "o.sock")
            run(["ssh-add", "-c", str(key)], env=env_o)
            assert _sign_file(env_o, key, tmp_path).returncode != 0, "OpenSSH signed unconfirmed"
        finally:
            proc.terminate()
            proc.wait(10)
    with running_agent(tmp_path, env=deny) as agent:
        agent.ssh_add("-c", str(key))  # accepted, as OpenSSH accepts it
        signed = _sign_file(agent.env, key, tmp_path)
        assert signed.returncode != 0, (
            "ssh-add -c accepted (exit 0, 'The user must confirm each use of the key') but "
            "the agent signed without confirmation: the ~/.ssh file store owns the blob and "
            f"the constraint is ignored\nagent log:\n{agent.log()}"
        )


def test_ssh_add_destination_constraint_applies_to_a_key_also_served_from_dot_ssh(
    tmp_path: Path,
) -> None:
    """`ssh-add -h host ~/.ssh/id_ed25519` is accepted, yet the key still signs anything
    (here `ssh-keygen -Y sign`, which OpenSSH refuses for a destination-constrained key)
    and is listed on forwarded connections: -h protects nothing for the keys users
    are most likely to constrain."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = _home_key(home)
    host = keygen(tmp_path, "host_ed25519")
    known = tmp_path / "known_hosts"
    pub = host.with_suffix(".pub").read_text().split()
    known.write_text(f"example.org {pub[0]} {pub[1]}\n")
    constrain = ["-H", str(known), "-h", "example.org", str(key)]
    with shared_dir() as d, openssh_agent(d) as osock:
        env_o = dict(os.environ, SSH_AUTH_SOCK=str(osock))
        run(["ssh-add", *constrain], env=env_o)
        assert _sign_file(env_o, key, tmp_path).returncode != 0, "OpenSSH signed"
    with running_agent(tmp_path) as agent:
        agent.ssh_add(*constrain)  # accepted, as OpenSSH accepts it
        signed = _sign_file(agent.env, key, tmp_path)
        assert signed.returncode != 0, (
            "ssh-add -h accepted, but the key signed ssh-keygen -Y data anyway (OpenSSH "
            "refuses): the destination constraint is shadowed by the ~/.ssh file store"
        )


def test_ssh_add_lifetime_applies_to_a_key_also_served_from_dot_ssh(tmp_path: Path) -> None:
    """`ssh-add -t 1 ~/.ssh/id_ed25519` prints "Lifetime set to 1 seconds"; once that
    second is over OpenSSH has forgotten the key. The agent must too, although its
    ~/.ssh file store also serves it: gone from `ssh-add -L`, refused for signing,
    until it is added again. (ssh-keygen -Y sign would fall back to the unencrypted key
    file, so the signature is asked of the agent directly.)"""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = _home_key(home)
    public = key.with_suffix(".pub").read_text().split()[1]
    with running_agent(tmp_path) as agent:
        assert public in agent.ssh_add("-L").stdout
        agent.ssh_add("-t", "1", str(key))  # accepted, as OpenSSH accepts it
        time.sleep(2.5)
        listed = agent.ssh_add("-L", check=False)
        assert public not in listed.stdout, (
            "ssh-add -t 1 accepted ('Lifetime set to 1 seconds'), but the key is still "
            "listed after its lifetime: the file store serves it regardless"
        )
        raw = RawAgent(agent.socket)
        try:
            reply = raw.request(protocol.SignRequest(base64.b64decode(public), b"data", 0))
        finally:
            raw.close()
        assert reply[:1] == bytes([protocol.SSH_AGENT_FAILURE]), reply[:1]
        # Added again, it is served again.
        agent.ssh_add(str(key))
        assert public in agent.ssh_add("-L").stdout


def test_ssh_add_d_drops_the_copy_and_a_scoped_socket_cannot_add_a_served_key(
    tmp_path: Path,
) -> None:
    """`ssh-add -d` of a key added with -c over the ~/.ssh one removes the copy: exit 0,
    and the file store serves the key again as configured (no confirmation). A scoped
    listener may not add a key the configured store serves (it would change the
    owner's key)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = _home_key(home)
    public = key.with_suffix(".pub").read_text().split()[1]
    scoped = tmp_path / "run" / "ci.sock"
    config = tmp_path / "agent.yaml"
    config.write_text(f"listeners:\n  - socket: {scoped}\n    allow_add: true\n")
    deny = {"SSH_ASKPASS": "/bin/false", "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    with running_agent(tmp_path, "--config", str(config), env=deny) as agent:
        scoped_env = dict(agent.env, SSH_AUTH_SOCK=str(scoped))
        refused = run(["ssh-add", "-c", str(key)], env=scoped_env, check=False)
        assert refused.returncode != 0, refused
        other = keygen(tmp_path, "id_other")  # control: the socket takes other keys
        run(["ssh-add", str(other)], env=scoped_env)
        agent.ssh_add("-c", str(key))
        assert _sign_file(agent.env, key, tmp_path).returncode != 0  # askpass says no
        removed = agent.ssh_add("-d", str(key), check=False)
        assert removed.returncode == 0, removed
        assert public in agent.ssh_add("-L").stdout
        key.chmod(0)  # make sure ssh-keygen asks the agent, not the file
        try:
            assert _sign_file(agent.env, key, tmp_path).returncode == 0
        finally:
            key.chmod(0o600)


# -- F2: a malformed key blob from an upstream agent breaks everyone's listing -----------


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def test_malformed_upstream_key_does_not_break_listing_of_other_stores(tmp_path: Path) -> None:
    """An upstream agent lists one key whose blob says ssh-ed25519 but holds 5 bytes.
    secretivex passes it through, and OpenSSH's clients reject the WHOLE answer
    ("error fetching identities: invalid format"): ssh-add -l/-L fail and ssh offers no
    agent key at all, including the file store's. docs/security.md: a garbage-sending
    upstream must never affect other stores."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = _home_key(home, comment="file-key")
    upstream = tmp_path / "up.sock"
    bad_blob = _string(b"ssh-ed25519") + _string(b"short")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        f"  - type: upstream\n    socket: {upstream}\n    refresh_ms: 200\n"
    )
    with (
        lying_upstream(upstream, [(bad_blob, b"garbage")]),
        running_agent(tmp_path, "--config", str(config)) as agent,
    ):
        time.sleep(0.6)  # a refresh has happened
        listed = agent.ssh_add("-l", check=False)
    assert listed.returncode == 0 and "file-key" in listed.stdout, (
        "one malformed upstream key blob broke ssh-add -l for every key: "
        f"rc={listed.returncode} stdout={listed.stdout!r} stderr={listed.stderr!r}"
    )


# -- F3: audit.path follows a symlink another uid planted -------------------------------


def test_audit_path_symlink_planted_by_another_uid_is_not_followed(tmp_path: Path) -> None:
    """The audit log is opened O_APPEND|O_CREAT without O_NOFOLLOW and without the
    checks the socket directory gets. Whoever can write the audit directory (here: it is
    owned by uid 65534) plants audit.log -> any file, and the agent (root here, or the
    service user) creates or appends to it: e.g. /etc/nologin, or corrupting a file
    only the agent's uid may write. The same holds for `--daemon --log-file`."""
    _need_root()
    with shared_dir() as d:
        logs = d / "logs"
        logs.mkdir()
        os.chown(logs, NOBODY, NOBODY)
        victim = d / "victim"
        victim.write_text("precious\n")
        victim.chmod(0o600)
        link = logs / "audit.log"
        as_uid(["ln", "-s", str(victim), str(link)], dict(os.environ), check=True)
        assert link.is_symlink()
        config = tmp_path / "c.yaml"
        config.write_text(f"audit:\n  path: {link}\n")
        agent = start_agent(tmp_path, "--config", str(config), wait=False)
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.proc.wait(3)
            if agent.proc.poll() is None:
                agent.ssh_add("-l", check=False)
        finally:
            agent.stop()
        assert victim.read_text() == "precious\n", (
            "the agent followed a symlink planted by another uid and wrote its audit "
            f"records into {victim}:\n{victim.read_text()[:300]}"
        )


# -- F4: a reload does not cut connections a new config no longer admits ----------------

_HOLDER = r"""
import socket, struct, sys, time, os
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(10)
def listing():
    s.sendall(b"\0\0\0\x01\x0b")
    head = s.recv(4)
    if len(head) < 4:
        return "closed"
    n = struct.unpack(">I", head)[0]; body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            return "closed"
        body += chunk
    if body[0] != 12:
        return "failure"
    return "keys=%d" % struct.unpack(">I", body[1:5])[0]
print("before", listing(), flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
try:
    print("after", listing(), flush=True)
except OSError as exc:
    print("after closed", exc, flush=True)
"""


@pytest.mark.parametrize("revocation", ["peer removed", "listener removed"])
def test_reload_cuts_connections_the_new_config_no_longer_admits(
    tmp_path: Path, revocation: str
) -> None:
    """A uid admitted by `peers` holds a connection; the owner removes it from `peers`
    (or removes the whole listener) and reloads. New connections are refused, but the
    open one keeps listing and signing with the keys indefinitely: revoking a container
    or a team member does not take effect until they reconnect."""
    _need_root()
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    _home_key(home)
    with shared_dir() as d:
        sock = d / "ci.sock"
        config = tmp_path / "c.yaml"
        admitted = (
            f"listeners:\n  - socket: {sock}\n    mode: '0666'\n    peers: {{uids: [{NOBODY}]}}\n"
        )
        config.write_text(admitted)
        script = d / "holder.py"
        script.write_text(_HOLDER)
        script.chmod(0o644)
        go = d / "go"
        with running_agent(tmp_path, "--config", str(config)) as agent:
            holder = subprocess.Popen(
                [
                    *setpriv_as(NOBODY),
                    "/usr/bin/python3",
                    str(script),
                    str(sock),
                    str(go),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            # Controls: the owner's open connections, on the main socket and on ci.sock.
            main = RawAgent(agent.socket)
            own = RawAgent(sock)
            listing = protocol.RequestIdentities()
            try:
                assert holder.stdout is not None
                first = holder.stdout.readline()
                assert first.startswith("before keys=1"), first
                for conn in (main, own):
                    assert conn.request(listing)[0] == protocol.SSH_AGENT_IDENTITIES_ANSWER
                if revocation == "peer removed":
                    config.write_text(admitted.replace(f"[{NOBODY}]", "[]"))
                else:
                    config.write_text("listeners: []\n")
                agent.signal(signal.SIGHUP)
                deadline = time.monotonic() + 15
                while "configuration reloaded" not in agent.log():
                    assert time.monotonic() < deadline, agent.log()
                    time.sleep(0.05)
                go.touch()
                after = holder.stdout.readline()
                # The owner is admitted everywhere: only a removed socket cuts it.
                assert main.request(listing)[0] == protocol.SSH_AGENT_IDENTITIES_ANSWER
                if revocation == "peer removed":
                    assert own.request(listing)[0] == protocol.SSH_AGENT_IDENTITIES_ANSWER
                else:
                    with pytest.raises(OSError):
                        own.request(listing)
                log = agent.log()
            finally:
                go.touch()
                holder.kill()
                holder.wait()
                main.close()
                own.close()
        assert "reload: closing connection" in log, log
        assert not after.startswith("after keys="), (
            f"after the reload ({revocation}) the revoked uid's open connection is still "
            f"served: {after.strip()!r}"
        )


# -- F5: --kill kills a process that merely mentions "secretivex" ------------------------


def test_kill_refuses_a_process_that_is_not_a_secretivex_agent(tmp_path: Path) -> None:
    """docs/quickstart.md: "--kill refuses a pid that is not a secretivex agent". The
    check is `b"secretivex" in argv[0..2]`: a stale SSH_AGENT_PID now naming
    `less secretivex-notes.txt` (here another uid's, and we are root) is SIGTERMed,
    and the command reports "Agent pid N killed"."""
    _need_root()
    victim = subprocess.Popen(
        [
            *setpriv_as(NOBODY),
            "bash",
            "-c",
            'exec -a "less /home/someone/secretivex-notes.txt" sleep 300',
        ],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 5
        while b"secretivex-notes" not in Path(f"/proc/{victim.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["SSH_AGENT_PID"] = str(victim.pid)
        killed = run([SECRETIVEX, "agent", "--kill"], env=env, check=False)
        time.sleep(0.3)
        assert victim.poll() is None, (
            f"secretivex agent --kill SIGTERMed pid {victim.pid}, a `less` of uid {NOBODY} "
            f"that only mentions secretivex in its argv (exit {killed.returncode}, "
            f"stdout {killed.stdout!r})"
        )
        assert killed.returncode != 0
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()


# -- F6: a config file others can write is used silently ---------------------------------


def test_config_file_writable_by_others_is_refused_or_warned(tmp_path: Path) -> None:
    """A config file decides which program runs as the agent (policy.confirm.command)
    and which uids get keys (listeners). A world-writable one (or one owned by another
    uid) is loaded without a word. OpenSSH refuses a group/world-writable ~/.ssh/config
    ("Bad owner or permissions"); the agent already warns about readable key files."""
    config = tmp_path / "c.yaml"
    config.write_text("logging:\n  level: info\n")
    config.chmod(0o666)
    agent = start_agent(tmp_path, "--config", str(config), wait=False)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.wait(3)
        refused = agent.proc.poll() not in (None, 0)
    finally:
        agent.stop()
    log = agent.log()
    # Refused (exit 2), naming the file and the fix, as ssh refuses such a config.
    assert refused and agent.proc.returncode == 2, log
    assert str(config) in log and "chmod go-w" in log, log


# -- F7: unknown extensions get SSH_AGENT_EXTENSION_FAILURE ------------------------------


def test_unknown_extension_is_answered_with_failure_as_openssh(tmp_path: Path) -> None:
    """draft-miller-ssh-agent §3.8: "If the agent does not support the requested
    extension then it MUST reply with an empty SSH_AGENT_FAILURE message"; OpenSSH's
    process_extension sends SSH_AGENT_FAILURE. secretivex sends
    SSH_AGENT_EXTENSION_FAILURE (28), which tells a client the extension exists and
    failed (its own messages.py docstring says "unknown ones get 5")."""
    request = protocol.Extension("no-such-extension@example.com", b"")
    with shared_dir() as d, openssh_agent(d) as osock:
        raw = RawAgent(osock)
        try:
            assert raw.request(request)[:1] == bytes([protocol.SSH_AGENT_FAILURE])
        finally:
            raw.close()
    with running_agent(tmp_path) as agent:
        raw = RawAgent(agent.socket)
        try:
            reply = raw.request(request)
        finally:
            raw.close()
    assert reply[:1] == bytes([protocol.SSH_AGENT_FAILURE]), f"got message type {reply[0]}"


# -- F8: config validate passes an audit.path the agent then refuses ---------------------


def test_config_validate_reports_an_audit_path_that_cannot_be_opened(tmp_path: Path) -> None:
    """docs/security.md: "An audit.path that cannot be opened is a config error (exit 2,
    one line; config validate reports it)". The agent does exit 2; `config validate`
    prints OK and exits 0."""
    config = tmp_path / "c.yaml"
    config.write_text(f"audit:\n  path: {tmp_path / 'no-such-dir' / 'audit.log'}\n")
    checked = run([SECRETIVEX, "config", "validate", str(config)], check=False)
    assert checked.returncode == 2 and "audit.path" in checked.stdout + checked.stderr, (
        f"config validate exit {checked.returncode}: {checked.stdout!r} {checked.stderr!r}"
    )


# -- F9: an upstream store that is the agent itself, through another path ----------------


def test_upstream_pointing_back_at_the_agent_through_a_symlink_is_caught(
    tmp_path: Path,
) -> None:
    """`stores[].socket` naming the agent's own socket is refused at load ("requests
    would loop back into the agent"), but the check compares paths: a symlink to the
    socket (or any other alias) passes, the upstream then owns every key the agent
    lists (it is first), and every sign loops back until the upstream timeout (5 s)
    and fails. Checking the peer (SO_PEERCRED pid == own pid) or the socket's inode
    would catch every alias."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = _home_key(home, comment="file-key")
    run_dir = tmp_path / "run"
    sock = run_dir / "agent.sock"
    alias = tmp_path / "alias.sock"
    alias.symlink_to(sock)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: upstream\n    socket: {alias}\n    timeout_ms: 2000\n"
        f"  - type: file\n    paths: [{key}]\n"
    )
    agent = start_agent(tmp_path, "--config", str(config), wait=False)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.wait(3)
        # Caught where it connects (SO_PEERCRED): the agent runs, the store is degraded.
        assert agent.proc.poll() is None, agent.log()
        time.sleep(1.5)  # the upstream's background refresh has listed the agent's keys
        signed = _sign_file(agent.env, key, tmp_path)
    finally:
        agent.stop()
    assert signed.returncode == 0, (
        "an upstream store that is the agent itself (through a symlink) was accepted and "
        f"took over the file key, whose signs now loop and fail:\n{signed.stderr}"
    )
