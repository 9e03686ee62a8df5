"""User mode under a real systemd: units in /etc/systemd/user enabled globally,
lingering users, socket activation serving each user's ~/.ssh keys.

The host restricts unprivileged user namespaces for alice and mallory (a seccomp
filter on their user managers, as Ubuntu 24.04's AppArmor default or
user.max_user_namespaces=0 would) and allows them for nora:

- alice: the units as shipped; they must work without user namespaces.
- mallory: adds the namespace sandbox on a host that cannot do it; the service cannot
  start, and ssh-add must get an error within 10 s (start limit, socket gives up).
- nora: the namespace sandbox where it works; writes outside the allowed paths fail.

Both flavours (packaged units, NixOS-rendered units) run the same tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from sdlib import FLAVOURS, PACKAGING, UIDS, Host, boot, install_nixos_units, nix_evaluate, stop

pytestmark = pytest.mark.container

RESTRICTED = ("alice", "mallory")
LINGERING = ("alice", "mallory", "nora")
SANDBOX = (PACKAGING / "user" / "sandbox.conf").read_text()


def sock(user: str) -> str:
    return f"/run/user/{UIDS[user]}/secretivex/agent.sock"


def ssh_add_l(host: Host, user: str, timeout: float = 30) -> tuple[int, str]:
    proc = host.user_sh(
        user, f"SSH_AUTH_SOCK={sock(user)} ssh-add -l", check=False, timeout=timeout
    )
    return proc.returncode, proc.stdout + proc.stderr


def user_drop_in(host: Host, user: str, text: str) -> None:
    d = f"/home/{user}/.config/systemd/user/secretivex.service.d"
    host.sh(f"mkdir -p {d}")
    host.put(f"{d}/sandbox.conf", text)
    host.sh(f"chown -R {user}: /home/{user}/.config")


def install_units(host: Host, flavour: str) -> None:
    if flavour == "packaged":
        for name in ("secretivex.socket", "secretivex.service"):
            host.put(f"/etc/systemd/user/{name}", (PACKAGING / "user" / name).read_text())
        host.sh("systemctl --global enable secretivex.socket")
        return
    # NixOS: what the module renders for a host without user namespaces for everyone
    # (security.allowUserNamespaces = false); nora gets the variant for a host with
    # them, as her own units (~/.config/systemd/user wins over /etc/systemd/user).
    out = nix_evaluate({"enable": True}, {"security": {"allowUserNamespaces": False}})
    user = out["systemd"]["user"]
    install_nixos_units(host, user["sockets"], "/etc/systemd/user", "socket")
    install_nixos_units(host, user["services"], "/etc/systemd/user", "service")
    host.sh("mkdir -p /etc/secretivex")
    host.put("/etc/secretivex/config.yaml", out["configFile"]["rendered"]["text"])
    sandboxed = nix_evaluate({"enable": True})["systemd"]["user"]
    home = "/home/nora/.config/systemd/user"
    host.sh(f"mkdir -p {home}")
    install_nixos_units(host, sandboxed["sockets"], home, "socket")
    install_nixos_units(host, sandboxed["services"], home, "service")
    host.sh("chown -R nora: /home/nora/.config")


@pytest.fixture(scope="module", params=FLAVOURS)
def host(request: pytest.FixtureRequest, systemd_image: str) -> Iterator[Host]:
    flavour: str = request.param
    host = boot(systemd_image)
    try:
        for user in RESTRICTED:
            d = f"/etc/systemd/system/user@{UIDS[user]}.service.d"
            host.sh(f"mkdir -p {d}")
            host.put(f"{d}/no-userns.conf", "[Service]\nRestrictNamespaces=~user\n")
        install_units(host, flavour)
        # mallory wants the sandbox on a host that cannot do it; nora where it can
        # (the packaged flavour's opt-in drop-in; the NixOS flavour renders it in)
        user_drop_in(host, "mallory", SANDBOX)
        if flavour == "packaged":
            user_drop_in(host, "nora", SANDBOX)
        for user in ("alice", "nora"):
            host.user_sh(
                user,
                "mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' "
                f"-C {user}-key -f ~/.ssh/id_ed25519",
            )
        host.sh("systemctl daemon-reload")
        host.sh(f"loginctl enable-linger {' '.join(LINGERING)}")
        for user in LINGERING:
            host.wait_for(f"test -S {sock(user)}")
        yield host
    finally:
        stop(host)


def test_socket_activation_serves_home_keys(host: Host) -> None:
    host.user_sh("alice", "systemctl --user stop secretivex.service")
    # nothing runs until the first client connects
    assert host.show("secretivex.socket", "ActiveState", user="alice")["ActiveState"] == "active"
    before = host.show("secretivex.service", "ActiveState", user="alice")
    assert before["ActiveState"] == "inactive", before

    code, listing = ssh_add_l(host, "alice")
    assert code == 0, listing
    assert "alice-key (ED25519)" in listing
    after = host.show("secretivex.service", "ActiveState", "SubState", user="alice")
    assert after == {"ActiveState": "active", "SubState": "running"}, after
    # the socket is the unit's: owner-only, in an owner-only directory
    modes = host.sh(f"stat -c '%U %a' {sock('alice')} $(dirname {sock('alice')})").stdout
    assert modes.split() == ["alice", "600", "alice", "700"], modes

    # and it signs: ssh-keygen -Y sign with the agent's key, verified
    host.user_sh(
        "alice",
        f"""set -e
        export SSH_AUTH_SOCK={sock("alice")}
        cd ~ && echo payload > data
        ssh-add -L > agent.pub
        ssh-keygen -Y sign -q -n file -f agent.pub data
        echo "alice $(cat agent.pub)" > allowed
        ssh-keygen -Y verify -f allowed -I alice -n file -s data.sig < data""",
    )


def _main_pid(host: Host, user: str) -> int:
    pid = int(host.show("secretivex.service", "MainPID", user=user)["MainPID"])
    assert pid > 0
    return pid


def _status(host: Host, pid: int) -> dict[str, str]:
    text = host.sh(f"cat /proc/{pid}/status").stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def writable(host: Host, pid: int, path: str) -> bool:
    """Whether the mount that holds ``path`` in process ``pid``'s mount namespace is
    read-write (the last, longest-prefix mount wins, as path lookup does)."""
    best, options = "", ""
    for line in host.sh(f"cat /proc/{pid}/mountinfo").stdout.splitlines():
        point, opts = line.split()[4:6]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, options = point, opts
    return options.split(",")[0] == "rw"


def test_hardening_that_needs_no_namespaces_applies(host: Host) -> None:
    assert ssh_add_l(host, "alice")[0] == 0
    status = _status(host, _main_pid(host, "alice"))
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # filter mode: SystemCallFilter, MemoryDenyWriteExecute...
    assert status["Umask"] == "0177"
    # without user namespaces there is no mount sandbox, knowingly: the agent sees the
    # host's root read-write (the units leave ProtectSystem= & co. out, see the unit)
    assert writable(host, _main_pid(host, "alice"), "/home/alice")


def test_namespace_sandbox_where_user_namespaces_work(host: Host) -> None:
    code, listing = ssh_add_l(host, "nora")
    assert code == 0 and "nora-key (ED25519)" in listing, listing
    pid = _main_pid(host, "nora")
    status = _status(host, pid)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapBnd"] == "0000000000000000"
    # writes outside the allowed paths fail: the system, the home directory (keys are
    # only read) and the runtime directory are read-only; /tmp is the agent's own
    for path in ("/etc", "/usr", "/var/lib", "/home/nora/.ssh", "/run/user/1005"):
        assert not writable(host, pid, path), path
    assert writable(host, pid, "/tmp")
    # the same paths are writable for nora outside the sandbox (the check has teeth)
    manager = host.sh("systemctl show -p MainPID --value user@1005.service").stdout.strip()
    assert writable(host, int(manager), "/home/nora/.ssh")


def test_a_service_that_cannot_start_never_leaves_a_client_hanging(host: Host) -> None:
    started = time.monotonic()
    code, output = ssh_add_l(host, "mallory", timeout=30)
    elapsed = time.monotonic() - started
    assert code != 0, output
    assert elapsed < 10, f"client waited {elapsed:.1f}s: {output}"
    assert "communication with agent failed" in output or "Connection refused" in output

    service = host.show(
        "secretivex.service", "Result", "NRestarts", "ExecMainStatus", user="mallory"
    )
    socket_unit = host.show("secretivex.socket", "ActiveState", "Result", user="mallory")
    assert socket_unit == {"ActiveState": "failed", "Result": "service-start-limit-hit"}
    assert int(service["NRestarts"]) <= 3  # a few tries, not a loop
    # the failure is the one a sandbox needing user namespaces causes on such hosts
    assert service["ExecMainStatus"] in ("217", "218", "226"), service
    # and it stays given up: a new client is refused at once
    started = time.monotonic()
    code, output = ssh_add_l(host, "mallory", timeout=30)
    assert code != 0 and time.monotonic() - started < 5, output


def test_reload_applies_a_new_config(host: Host) -> None:
    assert ssh_add_l(host, "alice")[0] == 0
    pid = _main_pid(host, "alice")
    config = "/home/alice/.config/secretivex/config.yaml"
    host.sh("mkdir -p /home/alice/.config/secretivex")
    host.put(config, "policy:\n  deny: ['comment:alice-*']\n", owner=1000, group=1000)
    try:
        host.user_sh("alice", "systemctl --user reload secretivex.service")
        host.wait_for(
            f"SSH_AUTH_SOCK={sock('alice')} ssh-add -l | grep -q 'no identities'", user="alice"
        )
    finally:
        host.sh(f"rm -f {config}")
        host.user_sh("alice", "systemctl --user reload secretivex.service")
    host.wait_for(f"SSH_AUTH_SOCK={sock('alice')} ssh-add -l | grep -q alice-key", user="alice")
    assert _main_pid(host, "alice") == pid  # reloaded in place, not restarted
    journal = host.journal(f"_UID={UIDS['alice']}", f"_PID={pid}")
    assert len(re.findall(r"configuration reloaded", journal)) >= 2, journal
