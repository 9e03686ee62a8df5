"""docs/fleet.md: a runner agent serves a central token-backed agent's keys through
OpenSSH's Unix-socket forwarding (`ssh -L sock:sock`), and survives the forward
dropping and coming back without restarting either agent.

Real processes throughout: sshd on 127.0.0.1, the `ssh` command from the doc, two
secretivex agents, a SoftHSM token, ssh-add and ssh-keygen -Y sign/verify.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import (
    AgentProcess,
    Sshd,
    keygen,
    require_tool,
    running_agent,
    start_sshd,
)
from softhsm import SoftHsm

REPO = Path(__file__).resolve().parents[2]


def doc_ssh_command() -> str:
    text = (REPO / "docs" / "fleet.md").read_text()
    block = text.split("<!-- test: tests/integration/test_fleet.py runs this command -->", 1)[1]
    return block.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")


def forward(sshd: Sshd, login_key: Path, local: Path, remote: Path) -> subprocess.Popen[bytes]:
    """The doc's `ssh -L`, with this host's sshd, key and paths substituted."""
    command = doc_ssh_command()
    command = command.replace("/run/secretivex-fleet/central.sock", str(local))
    command = command.replace("/run/secretivex/fleet.sock", str(remote))
    client_opts = (
        f"-F /dev/null -p {sshd.port} -i {login_key} -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o IdentityAgent=none -o UserKnownHostsFile={sshd.known_hosts} "
        f"-o StrictHostKeyChecking=yes {sshd.user}@127.0.0.1"
    )
    command = command.replace("fleet@central.example", client_opts)
    assert "-o StreamLocalBindUnlink=yes" in command and f"-L {local}:{remote}" in command
    return subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def listed(agent: AgentProcess, sock: Path | None = None) -> str:
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock or agent.socket)}
    return subprocess.run(["ssh-add", "-l"], env=env, capture_output=True, text=True).stdout


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[AgentProcess, Path]]:
    require_tool("sshd", "ssh", "ssh-add", "ssh-keygen")
    hsm = SoftHsm.create(tmp_path / "softhsm")
    token = hsm.init_token("fleet")
    token.generate("EC:edwards25519", key_id="01", label="ci-deploy")
    token.generate("EC:prime256v1", key_id="02", label="admin")
    fleet_sock = tmp_path / "central-run" / "fleet.sock"
    (tmp_path / "central").mkdir()
    cfg = tmp_path / "central" / "config.yaml"
    cfg.write_text(
        "stores:\n"
        "  - type: pkcs11\n"
        "    name: hsm\n"
        f"    module: {hsm.module}\n"
        f"    token_label: {token.label}\n"
        "    pin_env: FLEET_PIN\n"
        "listeners:\n"
        f"  - socket: {fleet_sock}\n"
        '    mode: "0600"\n'
        '    keys: ["comment:ci-*"]\n'
        "    allow_add: false\n"
    )
    env = {"SOFTHSM2_CONF": str(hsm.conf), "FLEET_PIN": token.pin}
    with running_agent(tmp_path / "central", "--config", str(cfg), env=env) as agent:
        yield agent, fleet_sock


def test_runner_agent_serves_central_keys_through_ssh_forward(
    tmp_path: Path, central: tuple[AgentProcess, Path]
) -> None:
    central_agent, fleet_sock = central
    assert "admin" in listed(central_agent) and "ci-deploy" in listed(central_agent)
    login = keygen(tmp_path, "runner-login", "ed25519")
    sshd = start_sshd(tmp_path, [login.with_suffix(".pub").read_text().strip()])
    forwarded = tmp_path / "runner-fleet" / "central.sock"
    forwarded.parent.mkdir(mode=0o700)
    runner_dir = tmp_path / "runner"
    runner_dir.mkdir()
    audit = runner_dir / "audit.jsonl"
    cfg = runner_dir / "config.yaml"
    cfg.write_text(
        "stores:\n"
        "  - type: upstream\n"
        "    name: central\n"
        f"    socket: {forwarded}\n"
        "    timeout_ms: 5000\n"
        "audit:\n"
        f"  path: {audit}\n"
    )
    ssh = forward(sshd, login, forwarded, fleet_sock)
    try:
        wait_for(forwarded.exists, what="the forwarded socket")
        with running_agent(runner_dir, "--config", str(cfg)) as runner:
            # Only the fleet scope crosses: the central listener hides "admin".
            wait_for(lambda: "ci-deploy" in listed(runner), what="central keys on the runner")
            assert "admin" not in listed(runner)
            # Sign through runner -> ssh forward -> central -> token; verify on the host.
            pub = tmp_path / "ci-deploy.pub"
            env = {**os.environ, "SSH_AUTH_SOCK": str(runner.socket)}
            lines = subprocess.run(
                ["ssh-add", "-L"], env=env, capture_output=True, text=True, check=True
            ).stdout
            pub.write_text(next(line for line in lines.splitlines() if "ci-deploy" in line))
            message = tmp_path / "release.txt"
            message.write_text("v1\n")
            subprocess.run(
                ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(message)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            allowed = tmp_path / "allowed_signers"
            allowed.write_text("ci@fleet " + " ".join(pub.read_text().split()[:2]) + "\n")
            with open(message, "rb") as data:
                verified = subprocess.run(
                    ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "ci@fleet",
                     "-n", "file", "-s", f"{message}.sig"],
                    stdin=data, capture_output=True, text=True,
                )  # fmt: skip
            assert verified.returncode == 0, verified.stderr

            # The forward drops: the runner agent keeps running, central keys go away.
            ssh.terminate()
            ssh.wait(30)
            wait_for(lambda: "ci-deploy" not in listed(runner), what="the drop to be seen")
            assert runner.proc.poll() is None and central_agent.proc.poll() is None
            # ...and comes back (a stale socket file may be left: StreamLocalBindUnlink).
            ssh = forward(sshd, login, forwarded, fleet_sock)
            wait_for(lambda: "ci-deploy" in listed(runner), what="the keys to come back")
            Path(f"{message}.sig").unlink()
            subprocess.run(
                ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(message)],
                env=env, check=True, capture_output=True,
            )  # fmt: skip
            assert runner.proc.poll() is None and central_agent.proc.poll() is None
    finally:
        ssh.terminate()
        ssh.wait(30)
        sshd.proc.terminate()
        sshd.proc.wait(30)
    records = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    # The runner's own audit log records who signed with the central key, here.
    signs = [r for r in records if r["request"] == "sign" and r["outcome"] == "ok"]
    assert len(signs) == 2, records
    assert all(r["key"] == signs[0]["key"] and r["key"].startswith("SHA256:") for r in signs)
