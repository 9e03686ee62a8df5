"""SoftHSM tokens through `secretivex agent` with the real OpenSSH tools: ssh-add -l / -s / -e,
ssh-keygen -Y sign + verify, ssh into a test sshd, a wrong PIN next to file keys."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import AgentProcess, keygen, require_tool, run, running_agent, start_sshd

try:
    from tests.integration.softhsm import SoftHsm, Token
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from softhsm import SoftHsm, Token  # type: ignore[no-redef]

pytestmark = [pytest.mark.softhsm, pytest.mark.openssh]

#: (pkcs11-tool key type, CKA_ID, label)
KEYS = [
    ("EC:edwards25519", "01", "ed"),
    ("EC:prime256v1", "02", "p256"),
    ("EC:secp384r1", "03", "p384"),
    ("rsa:3072", "04", "rsa"),
]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen")


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    # The agent is another process: it gets its own token directory via SOFTHSM2_CONF.
    return SoftHsm.create(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture(scope="module")
def token(hsm: SoftHsm) -> Token:
    tok = hsm.init_token("agent-ci")
    for key_type, key_id, label in KEYS:
        tok.generate(key_type, key_id=key_id, label=label)
    return tok


def write_config(tmp: Path, hsm: SoftHsm, token: Token, *, extra: str = "") -> Path:
    cfg = tmp / "config.yaml"
    cfg.write_text(
        "stores:\n"
        "  - type: pkcs11\n"
        "    name: hsm\n"
        f"    module: {hsm.module}\n"
        f"    token_label: {token.label}\n"
        "    pin_env: TEST_PKCS11_PIN\n" + extra
    )
    return cfg


@pytest.fixture
def agent(tmp_path: Path, hsm: SoftHsm, token: Token) -> Iterator[AgentProcess]:
    cfg = write_config(tmp_path, hsm, token)
    env = {"SOFTHSM2_CONF": str(hsm.conf), "TEST_PKCS11_PIN": token.pin}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as proc:
        yield proc


def public_lines(agent: AgentProcess) -> dict[str, str]:
    """comment -> "type base64" from ``ssh-add -L``."""
    out = agent.ssh_add("-L").stdout
    return {line.split()[2]: " ".join(line.split()[:2]) for line in out.splitlines()}


def test_ssh_add_lists_token_keys(agent: AgentProcess, hsm: SoftHsm, token: Token) -> None:
    listed = public_lines(agent)
    assert set(listed) == {label for _, _, label in KEYS}
    # OpenSSH's own PKCS#11 reader agrees (it skips Ed25519 before OpenSSH 9.x).
    for line in hsm.ssh_keygen_public_keys():
        key = " ".join(line.split()[:2])
        assert key in listed.values()
    ed = token.public_key("01")
    raw = ed.public_bytes_raw()
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + raw
    assert listed["ed"] == "ssh-ed25519 " + base64.b64encode(blob).decode()


@pytest.mark.parametrize("label", [label for _, _, label in KEYS])
def test_ssh_keygen_sign_and_verify(agent: AgentProcess, tmp_path: Path, label: str) -> None:
    pub = tmp_path / f"{label}.pub"
    pub.write_text(public_lines(agent)[label] + f" {label}\n")
    message = tmp_path / "message.txt"
    message.write_text("signed by a SoftHSM key through secretivex\n")
    run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(message)], env=agent.env)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f"ci@example {public_lines(agent)[label]}\n")
    proc = run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(allowed),
            "-I",
            "ci@example",
            "-n",
            "file",
            "-s",
            f"{message}.sig",
        ],
        input=message.read_bytes(),
    )
    assert "Good" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "label,algorithms",
    [
        ("ed", "ssh-ed25519"),
        ("p256", "ecdsa-sha2-nistp256"),
        ("rsa", "rsa-sha2-256"),
        ("rsa", "rsa-sha2-512"),
    ],
)
def test_ssh_login_with_token_key(
    agent: AgentProcess, tmp_path: Path, label: str, algorithms: str
) -> None:
    require_tool("ssh", "sshd")
    key = public_lines(agent)[label]
    sshd = start_sshd(tmp_path, [key])
    try:
        proc = run(
            [*sshd.ssh_argv("-o", f"PubkeyAcceptedAlgorithms={algorithms}"), "echo", "token-ok"],
            env=agent.env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr + sshd.log_path.read_text()
        assert "token-ok" in proc.stdout
        # PubkeyAcceptedAlgorithms leaves ssh one signature algorithm: it asked the agent
        # for exactly that one (flags 2 / 4 for RSA) and sshd accepted the result.
        assert "Accepted publickey" in sshd.log_path.read_text()
    finally:
        sshd.proc.terminate()
        sshd.proc.wait(10)


def test_wrong_pin_degrades_but_file_keys_sign(tmp_path: Path, hsm: SoftHsm, token: Token) -> None:
    filekey = keygen(tmp_path, "id_ed25519", comment="file-key")
    cfg = write_config(tmp_path, hsm, token, extra=f"  - type: file\n    paths: [{filekey}]\n")
    env = {"SOFTHSM2_CONF": str(hsm.conf), "TEST_PKCS11_PIN": "not-the-pin"}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        assert set(public_lines(agent)) == {"file-key"}
        message = tmp_path / "m.txt"
        message.write_text("x\n")
        run(
            ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", f"{filekey}.pub", str(message)],
            env=agent.env,
        )
        log = agent.log()
        assert "wrong PIN; not retrying (fix pin and send SIGHUP)" in log
        assert "not-the-pin" not in log
        assert log.count("degraded") == 1  # one attempt, no retry loop


def _askpass(tmp: Path, answer: str) -> dict[str, str]:
    script = tmp / "askpass.sh"
    script.write_text(f"#!/bin/sh\necho '{answer}'\n")
    script.chmod(0o700)
    return {"SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


def test_ssh_add_s_and_e(tmp_path: Path, hsm: SoftHsm, token: Token) -> None:
    env = {"SOFTHSM2_CONF": str(hsm.conf)}
    with running_agent(tmp_path, env=env) as agent:
        agent.ssh_add("-s", hsm.module, extra_env=_askpass(tmp_path, token.pin))
        assert set(public_lines(agent)) == {label for _, _, label in KEYS}
        pub = tmp_path / "p384.pub"
        pub.write_text(public_lines(agent)["p384"] + "\n")
        message = tmp_path / "m.txt"
        message.write_text("smartcard\n")
        run(["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(message)], env=agent.env)
        # The same module by another path (symlink) is the same provider.
        link = tmp_path / "softhsm-link.so"
        link.symlink_to(os.path.realpath(hsm.module))
        agent.ssh_add("-e", str(link))
        out = agent.ssh_add("-l", check=False)
        assert "no identities" in out.stdout + out.stderr


def test_ssh_add_s_refused_outside_allowlist(tmp_path: Path, hsm: SoftHsm, token: Token) -> None:
    cfg = tmp_path / "config.yaml"
    audit = tmp_path / "audit.jsonl"
    cfg.write_text(f'agent:\n  pkcs11_allowlist: ["/opt/*"]\naudit:\n  path: {audit}\n')
    env = {"SOFTHSM2_CONF": str(hsm.conf)}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        proc = agent.ssh_add("-s", hsm.module, check=False, extra_env=_askpass(tmp_path, token.pin))
        assert proc.returncode != 0
        out = agent.ssh_add("-l", check=False)
        assert "no identities" in out.stdout + out.stderr
    assert "pkcs11_allowlist" in audit.read_text()
