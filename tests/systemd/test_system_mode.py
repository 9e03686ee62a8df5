"""Shared-host (system) mode under a real systemd: the main socket and a listener
socket for group `team`, socket activation, the agent as user `secretivex`.

Users: alice is in group secretivex (the main socket's group), carol has team as a
supplementary group, dave as his primary group, eve is in neither. The key is
passphrase-protected; the passphrase reaches the agent only as a systemd credential
(LoadCredential=). Both flavours (packaged units, NixOS-rendered units) run the same
tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sdlib import FLAVOURS, PACKAGING, Host, boot, install_nixos_units, nix_evaluate, stop

pytestmark = pytest.mark.container

MAIN = "/run/secretivex/agent.sock"
TEAM = "/run/secretivex/team.sock"
CREDENTIAL = "/etc/secretivex/credentials/passphrase"

SETTINGS: dict[str, Any] = {
    "stores": [
        {
            "type": "file",
            "paths": ["/var/lib/secretivex/keys"],
            "passphrase_file": "/run/credentials/secretivex.service/passphrase",
        }
    ],
    # signing with slow-key waits 3 s for "approval": an in-flight request to drain
    "policy": {"confirm": {"command": ["/bin/sh", "-c", "sleep 3"], "keys": ["comment:slow-*"]}},
    # no peers: the group's members are admitted
    "listeners": [{"socket": TEAM, "mode": "0660", "group": "team"}],
}


def yaml_of(settings: dict[str, Any]) -> str:
    import json

    return json.dumps(settings)  # JSON is YAML


def ssh_add_l(host: Host, user: str, socket: str) -> tuple[int, str]:
    proc = host.sh(f"SSH_AUTH_SOCK={socket} ssh-add -l", user=user, check=False, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def install(host: Host, flavour: str) -> None:
    if flavour == "packaged":
        host.sh("mkdir -p /etc/sysusers.d")
        host.put(
            "/etc/sysusers.d/secretivex.conf",
            (PACKAGING / "sysusers.d" / "secretivex.conf").read_text(),
        )
        host.sh("systemd-sysusers")
        for name in ("secretivex.socket", "secretivex-listener@.socket", "secretivex.service"):
            host.put(f"/etc/systemd/system/{name}", (PACKAGING / "system" / name).read_text())
        # the credential, as docs/quickstart.md says: a drop-in
        host.sh("mkdir -p /etc/systemd/system/secretivex.service.d")
        host.put(
            "/etc/systemd/system/secretivex.service.d/credentials.conf",
            f"[Service]\nLoadCredential=passphrase:{CREDENTIAL}\n",
        )
        host.put("/etc/secretivex/config.yaml", yaml_of(SETTINGS))
        host.sh("systemctl daemon-reload")
        host.sh("systemctl enable --now secretivex.socket secretivex-listener@team.socket")
        return
    out = nix_evaluate(nix_config(SETTINGS))
    # users.users.secretivex / users.groups.secretivex, as NixOS creates them
    account = out["users"]["users"]["secretivex"]
    assert account["isSystemUser"] and account["group"] == "secretivex"
    home = account["home"]
    host.sh(f"groupadd --system secretivex && useradd --system -g secretivex -d {home} secretivex")
    system = out["systemd"]
    sockets = install_nixos_units(host, system["sockets"], "/etc/systemd/system", "socket")
    install_nixos_units(host, system["services"], "/etc/systemd/system", "service")
    host.put("/etc/secretivex/config.yaml", out["configFile"]["rendered"]["text"])
    host.sh("systemctl daemon-reload")
    host.sh(f"systemctl start {' '.join(sockets)}")


def nix_config(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "enable": True,
        "mode": "system",
        "credentials": {"passphrase": CREDENTIAL},
        "settings": settings,
    }


@pytest.fixture(scope="module", params=FLAVOURS)
def host(request: pytest.FixtureRequest, systemd_image: str) -> Iterator[Host]:
    flavour: str = request.param
    host = boot(systemd_image)
    host.flavour = flavour
    try:
        host.sh(
            f"""set -e
            mkdir -p /etc/secretivex/credentials && chmod 700 /etc/secretivex/credentials
            echo 'correct horse' > {CREDENTIAL} && chmod 600 {CREDENTIAL}"""
        )
        install(host, flavour)
        host.sh(
            """set -e
            usermod -aG secretivex alice
            install -d -o secretivex -g secretivex -m 0700 \
                /var/lib/secretivex /var/lib/secretivex/keys
            cd /var/lib/secretivex/keys
            for name in team slow; do
                runuser -u secretivex -- ssh-keygen -q -t ed25519 -N 'correct horse' \
                    -C $name-key -f ${name}_ed25519
            done"""
        )
        yield host
    finally:
        stop(host)


def owners(host: Host) -> dict[str, list[str]]:
    out = host.sh(f"stat -c '%n %U %G %a' /run/secretivex {MAIN} {TEAM}").stdout
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()}


EXPECTED_OWNERS = {
    "/run/secretivex": ["root", "root", "755"],
    MAIN: ["secretivex", "secretivex", "660"],
    TEAM: ["secretivex", "team", "660"],
}


def test_group_members_served_before_and_after_activation(host: Host) -> None:
    host.sh("systemctl stop secretivex.service")  # whatever ran before: back to sockets only
    assert host.show("secretivex.service", "ActiveState")["ActiveState"] == "inactive"
    assert owners(host) == EXPECTED_OWNERS

    # first call: activates the service; carol is in team as a supplementary group
    code, listing = ssh_add_l(host, "carol", TEAM)
    assert code == 0, listing
    assert "team-key" in listing and "slow-key" in listing
    assert host.show("secretivex.service", "ActiveState")["ActiveState"] == "active"
    # activation left every socket as its unit made it (no RuntimeDirectory= re-own)
    assert owners(host) == EXPECTED_OWNERS

    # again, with the service active; dave has team as his primary group
    for user in ("carol", "dave"):
        code, listing = ssh_add_l(host, user, TEAM)
        assert code == 0 and "team-key" in listing, (user, listing)
    # the main socket serves its group (secretivex): alice
    code, listing = ssh_add_l(host, "alice", MAIN)
    assert code == 0 and "team-key" in listing, listing
    # eve is in neither group
    for socket in (TEAM, MAIN):
        code, output = ssh_add_l(host, "eve", socket)
        assert code != 0 and "Permission denied" in output, output
    # non-members of team are refused on it even when the file would let them in:
    # alice (secretivex group, not team) cannot connect to team.sock
    code, output = ssh_add_l(host, "alice", TEAM)
    assert code != 0, output


def test_credential_unlocks_the_key_and_the_sandbox_holds(host: Host) -> None:
    host.sh(
        """set -e
        cd /tmp && rm -rf carol-sign && mkdir carol-sign && chown carol carol-sign""",
    )
    host.sh(
        f"""set -e
        export SSH_AUTH_SOCK={TEAM}
        cd /tmp/carol-sign && echo payload > data
        ssh-add -L | grep team-key > team.pub
        ssh-keygen -Y sign -q -n file -f team.pub data
        echo "team $(cat team.pub)" > allowed
        ssh-keygen -Y verify -f allowed -I team -n file -s data.sig < data""",
        user="carol",
    )
    # the passphrase came in as a credential: staged by systemd, readable by the
    # agent's user only, the source file root-only
    assert (
        f"LoadCredential=passphrase:{CREDENTIAL}"
        in host.sh("systemctl cat secretivex.service").stdout
    )
    staged = host.sh("stat -c '%U %a' /run/credentials/secretivex.service/passphrase").stdout
    assert staged.split() == ["secretivex", "400"], staged
    assert host.sh(f"cat {CREDENTIAL}", user="carol", check=False).returncode != 0
    props = host.show("secretivex.service", "MainPID", "User")
    assert props["User"] == "secretivex"
    pid = int(props["MainPID"])
    status = dict(
        (k, v.strip())
        for k, v in (
            line.split(":", 1) for line in host.sh(f"cat /proc/{pid}/status").stdout.splitlines()
        )
    )
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapBnd"] == "0000000000000000" and status["CapEff"] == "0000000000000000"
    assert status["Uid"].split()[0] == host.sh("id -u secretivex").stdout.strip()
    # the agent can write its state directory and its /tmp, nothing else
    mounts = []
    for line in host.sh(f"cat /proc/{pid}/mountinfo").stdout.splitlines():
        point, opts = line.split()[4:6]
        mounts.append((point, opts.split(",")[0]))

    def writable(path: str) -> bool:
        best = max(
            (m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
            key=lambda m: len(m[0]),
        )
        return best[1] == "rw"

    for path in ("/etc/secretivex", "/usr", "/var/lib/other", "/opt/secretivex"):
        assert not writable(path), path
    assert writable("/var/lib/secretivex") and writable("/tmp")
    # /home is gone for the agent (ProtectHome=yes)
    home = [m for m in mounts if m[0] == "/home"]
    assert home, mounts


def _reconfigure(host: Host, settings: dict[str, Any]) -> None:
    if host.flavour == "packaged":
        host.put("/etc/secretivex/config.yaml", yaml_of(settings))
    else:  # what nixos-rebuild switch does: a new rendered file, then a reload
        out = nix_evaluate(nix_config(settings))
        host.put("/etc/secretivex/config.yaml", out["configFile"]["rendered"]["text"])
    host.sh("systemctl reload secretivex.service")


def test_reload_applies_new_config_and_the_manager_sees_the_states(host: Host) -> None:
    assert ssh_add_l(host, "carol", TEAM)[0] == 0
    pid = host.show("secretivex.service", "MainPID")["MainPID"]
    host.sh("systemd-analyze log-level debug")
    since = host.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    try:
        narrowed = {**SETTINGS, "policy": {**SETTINGS["policy"], "deny": ["comment:team-*"]}}
        _reconfigure(host, narrowed)
        host.wait_for(f"SSH_AUTH_SOCK={TEAM} ssh-add -l | grep -q slow-key", user="carol")
        host.wait_for(f"! SSH_AUTH_SOCK={TEAM} ssh-add -l | grep -q team-key", user="carol")
        _reconfigure(host, SETTINGS)
        host.wait_for(f"SSH_AUTH_SOCK={TEAM} ssh-add -l | grep -q team-key", user="carol")
    finally:
        host.sh("systemd-analyze log-level info")
    assert host.show("secretivex.service", "MainPID")["MainPID"] == pid  # not restarted
    manager = host.journal(f"--since '{since}'", "_PID=1")
    notes = re.findall(rf"Got notification message from PID {pid} \(([A-Z]+)=1", manager)
    # each reload: RELOADING=1, then READY=1 once the new config is in force
    assert notes[:4] == ["RELOADING", "READY", "RELOADING", "READY"], notes
    assert "secretivex.service: Changed running -> reload" in manager
    assert "secretivex.service: Changed reload -> running" in manager
    assert host.show("secretivex.service", "ActiveState")["ActiveState"] == "active"


def test_stop_drains_in_flight_requests(host: Host) -> None:
    assert ssh_add_l(host, "carol", TEAM)[0] == 0
    pid = host.show("secretivex.service", "MainPID")["MainPID"]
    host.sh("systemd-analyze log-level debug")
    since = host.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    try:
        # carol signs with slow-key (3 s of "approval"); the service is stopped 1 s in
        result = host.sh(
            f"""cd /tmp && rm -rf drain && mkdir drain && chown carol drain && cd drain
            runuser -u carol -- sh -c 'export SSH_AUTH_SOCK={TEAM}
                echo payload > data && ssh-add -L | grep slow-key > slow.pub &&
                ssh-keygen -Y sign -q -n file -f slow.pub data' > sign.log 2>&1 &
            signer=$!
            sleep 1.5
            systemctl stop secretivex.service
            wait $signer; echo "sign=$?"
            cat sign.log
            echo "state=$(systemctl show -p ActiveState --value secretivex.service)"
            test -s data.sig && echo signed""",
            timeout=60,
        )
    finally:
        host.sh("systemd-analyze log-level info")
    assert "sign=0" in result.stdout and "signed" in result.stdout, result.stdout
    assert "state=inactive" in result.stdout, result.stdout
    manager = host.journal(f"--since '{since}'", "_PID=1")
    assert f"Got notification message from PID {pid} (STOPPING=1)" in manager, manager[-3000:]
    agent_log = host.journal(f"--since '{since}'", "-u secretivex.service")
    assert "draining" in agent_log, agent_log
    # the socket stays; the next client starts the agent again
    code, listing = ssh_add_l(host, "carol", TEAM)
    assert code == 0 and "team-key" in listing, listing
    assert owners(host) == EXPECTED_OWNERS


def socket_units(host: Host) -> list[str]:
    out = host.sh("systemctl list-units --all --plain --no-legend 'secretivex*.socket'").stdout
    units = [line.split()[0] for line in out.splitlines()]
    assert len(units) == 2, units  # the main socket and the team listener
    return units


def test_an_invalid_config_never_loops_and_never_leaves_a_client_hanging(host: Host) -> None:
    host.sh("systemctl stop secretivex.service")
    good = host.sh("cat /etc/secretivex/config.yaml").stdout
    host.put("/etc/secretivex/config.yaml", "agent:\n  max_connections: 0\n")
    try:
        started = time.monotonic()
        code, output = ssh_add_l(host, "carol", TEAM)
        elapsed = time.monotonic() - started
        assert code != 0 and elapsed < 10, (elapsed, output)
        service = host.show("secretivex.service", "Result", "NRestarts", "ExecMainStatus")
        # exit 2 (config error) is not restarted; the socket re-triggers it at most
        # until the start limit, then gives up
        assert service["ExecMainStatus"] == "2" and service["NRestarts"] == "0", service
        for unit in socket_units(host):
            state = host.show(unit, "ActiveState", "Result")
            assert state == {"ActiveState": "failed", "Result": "service-start-limit-hit"}, (
                unit,
                state,
            )
        journal = host.journal("-u secretivex.service")
        assert "agent.max_connections" in journal  # the reason, with the key, in the journal
        # at error priority, where `journalctl -p err` (and alerting on it) looks
        assert "agent.max_connections" in host.journal("-p err -u secretivex.service")
    finally:
        host.put("/etc/secretivex/config.yaml", good)
        host.sh("systemctl reset-failed secretivex.service")
        sockets = socket_units(host)
        host.sh(f"systemctl reset-failed {' '.join(sockets)}; systemctl start {' '.join(sockets)}")
    code, listing = ssh_add_l(host, "carol", TEAM)
    assert code == 0 and "team-key" in listing, listing
