"""Tokens whose PIN is neither in an env variable nor a file: ``pin_prompt: true`` asks a
real ``SSH_ASKPASS`` script, ``pin_command`` runs a real program, at first use, through
the real agent with a SoftHSM token. The PIN stays in memory: never in the log (debug
level), ``client health``, the metrics snapshot, the audit log or any file the agent
writes; a cancelled, timed-out or wrong answer is a store error in ``client health`` and
is not asked again until SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import SECRETIVEX, AgentProcess, require_tool, run, running_agent

try:
    from tests.integration.softhsm import SoftHsm, Token
except ImportError:  # tests/ is not a package: pytest put this directory on sys.path
    from softhsm import SoftHsm, Token  # type: ignore[no-redef]

pytestmark = [pytest.mark.softhsm, pytest.mark.openssh]

PIN = "pin-prompted-8642"


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("ssh-add", "ssh-keygen")


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    return SoftHsm.create(tmp_path_factory.mktemp("softhsm"))


@pytest.fixture
def token(hsm: SoftHsm) -> Token:
    tok = hsm.init_token(pin=PIN)
    tok.generate("EC:edwards25519", key_id="01", label="prompted-ed")
    return tok


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def askpass_script(tmp: Path, *, answer_file: Path, exit_code: int = 0, sleep: int = 0) -> Path:
    """A real askpass program: records each call (argv, SSH_ASKPASS_PROMPT, whether a
    leaked secret variable reached it) and prints the answer file's first line."""
    calls = tmp / "askpass-calls"
    script = tmp / "askpass.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "prompt=$1|kind=${{SSH_ASKPASS_PROMPT-unset}}|leak=${{LEAKY_SECRET-none}}'
        f"|pp=${{SECRETIVEX_PIN_PROMPT-}}\" >> '{calls}'\n"
        + (f"sleep {sleep}\n" if sleep else "")
        + (f"exit {exit_code}\n" if exit_code else "")
        + f"head -n1 '{answer_file}'\n"
    )
    script.chmod(0o700)
    return script


def calls(tmp: Path) -> list[str]:
    path = tmp / "askpass-calls"
    return path.read_text().splitlines() if path.exists() else []


def config(tmp: Path, hsm: SoftHsm, token: Token, pin_lines: str) -> Path:
    cfg = tmp / "config.yaml"
    cfg.write_text(
        "stores:\n"
        "  - type: pkcs11\n"
        "    name: hsm\n"
        f"    module: {hsm.module}\n"
        f"    token_label: {token.label}\n"
        f"{pin_lines}"
        f"metrics:\n  path: {tmp / 'metrics.json'}\n  interval_ms: 100\n"
        f"audit:\n  path: {tmp / 'audit.jsonl'}\n"
        "logging:\n  level: debug\n"
    )
    return cfg


def health(agent: AgentProcess) -> tuple[str, dict[str, object]]:
    text = run(
        [SECRETIVEX, "client", "health", "--socket", str(agent.socket)], env=agent.env, check=False
    ).stdout
    doc = json.loads(
        run(
            [SECRETIVEX, "client", "health", "--json", "--socket", str(agent.socket)],
            env=agent.env,
        ).stdout
    )
    return text, doc


def hsm_store(doc: dict[str, object]) -> dict[str, object]:
    stores = doc["agent"]["stores"]  # type: ignore[index]
    assert isinstance(stores, list)
    return next(s for s in stores if s["name"] == "hsm")


def assert_pin_nowhere(agent: AgentProcess, tmp: Path, *texts: str) -> None:
    """Not in the log, health, metrics, audit, nor any file under tmp except the answer."""
    for text in (agent.log(), *texts):
        assert PIN not in text
    for path in tmp.rglob("*"):
        if path.is_file() and path.name != "answer" and "softhsm" not in path.parts[-2]:
            assert PIN.encode() not in path.read_bytes(), path


def test_askpass_asked_once_at_first_use_pin_kept_in_memory_only(
    tmp_path: Path, hsm: SoftHsm, token: Token
) -> None:
    answer = tmp_path / "answer"
    answer.write_text(PIN + "\n")
    askpass = askpass_script(tmp_path, answer_file=answer)
    cfg = config(tmp_path, hsm, token, "    pin_prompt: true\n")
    env = {
        "SOFTHSM2_CONF": str(hsm.conf),
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_PROMPT": "confirm",  # the agent must not pass this on for a PIN
        "LEAKY_SECRET": "do-not-inherit",
    }
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        assert wait_until(lambda: "prompted-ed" in agent.ssh_add("-l", check=False).stdout)
        (tmp_path / "msg").write_bytes(b"signed with a prompted PIN")
        pub = tmp_path / "k.pub"
        pub.write_text(agent.ssh_add("-L").stdout.splitlines()[0] + "\n")
        signed = run(
            ["ssh-keygen", "-Y", "sign", "-n", "file", "-f", str(pub), str(tmp_path / "msg")],
            env=agent.env,
        )
        assert signed.returncode == 0 and (tmp_path / "msg.sig").exists()
        for _ in range(3):
            agent.ssh_add("-l")
        # A reload for another reason re-opens the token with the PIN it holds: no prompt.
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in agent.log())
        assert wait_until(lambda: "prompted-ed" in agent.ssh_add("-l", check=False).stdout)
        text, doc = health(agent)
        store = hsm_store(doc)
        assert store["state"] == "ok" and store["detail"]["login"] == "user"  # type: ignore[index]
        assert wait_until(lambda: (tmp_path / "audit.jsonl").exists())
        assert wait_until(lambda: (tmp_path / "metrics.json").exists())
        metrics = (tmp_path / "metrics.json").read_text()
        audit = (tmp_path / "audit.jsonl").read_text()
    recorded = calls(tmp_path)
    assert len(recorded) == 1, recorded  # asked once, kept in memory for every later use
    assert f"prompt=Enter PIN for token '{token.label}'" in recorded[0]
    assert "kind=unset" in recorded[0] and "leak=none" in recorded[0]
    assert_pin_nowhere(agent, tmp_path, text, json.dumps(doc), metrics, audit)


def test_cancelled_prompt_is_a_store_error_until_sighup(
    tmp_path: Path, hsm: SoftHsm, token: Token
) -> None:
    answer = tmp_path / "answer"
    answer.write_text(PIN + "\n")
    cancel = askpass_script(tmp_path, answer_file=answer, exit_code=1)
    program = tmp_path / "pin-program"
    program.symlink_to(cancel)
    cfg = config(tmp_path, hsm, token, f"    pin_command: [{program}, --token, ci]\n")
    env = {"SOFTHSM2_CONF": str(hsm.conf)}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        assert wait_until(lambda: len(calls(tmp_path)) == 1)
        assert wait_until(lambda: "cancelled" in health(agent)[0])
        text, doc = health(agent)
        store = hsm_store(doc)
        assert store["state"] == "degraded"
        assert "PIN prompt" in str(store["last_error"]) and "exited 1" in str(store["last_error"])
        assert f"PIN prompt for token '{token.label}'" in text
        strict = run(
            [SECRETIVEX, "client", "health", "--strict", "--socket", str(agent.socket)],
            env=agent.env,
            check=False,
        )
        assert strict.returncode == 3
        time.sleep(2)  # longer than several backoff rounds: nobody is asked again
        assert len(calls(tmp_path)) == 1
        assert "prompted-ed" not in agent.ssh_add("-l", check=False).stdout
        # The person fixes it and sends SIGHUP: asked again, the token opens.
        program.unlink()
        program.symlink_to(askpass_script(tmp_path, answer_file=answer))
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "prompted-ed" in agent.ssh_add("-l", check=False).stdout)
        assert len(calls(tmp_path)) == 2
        assert "pp=Enter PIN for token" in calls(tmp_path)[-1]
        text, doc = health(agent)
    assert_pin_nowhere(agent, tmp_path, text, json.dumps(doc))


def test_wrong_pin_from_prompt_is_not_retried(tmp_path: Path, hsm: SoftHsm, token: Token) -> None:
    answer = tmp_path / "answer"
    answer.write_text("000000-wrong\n")
    askpass = askpass_script(tmp_path, answer_file=answer)
    cfg = config(tmp_path, hsm, token, "    pin_prompt: true\n")
    env = {"SOFTHSM2_CONF": str(hsm.conf), "SSH_ASKPASS": str(askpass)}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        assert wait_until(lambda: "wrong PIN" in health(agent)[0])
        time.sleep(2)
        _, doc = health(agent)
        store = hsm_store(doc)
        assert store["detail"]["login"] == "failed"  # type: ignore[index]
        assert store["detail"]["login_attempts"] == 1  # type: ignore[index]
        assert len(calls(tmp_path)) == 1  # one prompt, one login attempt, then it waits
    # The token was not locked by retries: the right PIN still logs in.
    ok = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            hsm.module,
            "--token-label",
            token.label,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ],
        env={"SOFTHSM2_CONF": str(hsm.conf), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr


def test_prompt_timeout_is_a_store_error(tmp_path: Path, hsm: SoftHsm, token: Token) -> None:
    answer = tmp_path / "answer"
    answer.write_text(PIN + "\n")
    slow = askpass_script(tmp_path, answer_file=answer, sleep=30)
    cfg = config(tmp_path, hsm, token, f"    pin_command: [{slow}]\n    pin_timeout_ms: 500\n")
    with running_agent(tmp_path, "--config", str(cfg), env={"SOFTHSM2_CONF": str(hsm.conf)}) as a:
        assert wait_until(lambda: "no answer within 0.5 s" in health(a)[0])
        assert len(calls(tmp_path)) == 1


def test_prompt_without_a_selector_names_the_token_it_found(tmp_path: Path) -> None:
    """docs/pkcs11.md's workstation example (no token_label: a single YubiKey): the
    question names the token the store found, as the doc shows, not "first token"."""
    hsm = SoftHsm.create(tmp_path / "softhsm")
    token = hsm.init_token(pin=PIN)
    token.generate("EC:edwards25519", key_id="01", label="prompted-ed")
    answer = tmp_path / "answer"
    answer.write_text(PIN + "\n")
    askpass = askpass_script(tmp_path, answer_file=answer)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"stores:\n  - type: pkcs11\n    module: {hsm.module}\n    pin_prompt: true\n")
    env = {"SOFTHSM2_CONF": str(hsm.conf), "SSH_ASKPASS": str(askpass)}
    with running_agent(tmp_path, "--config", str(cfg), env=env) as agent:
        assert wait_until(lambda: "prompted-ed" in agent.ssh_add("-l", check=False).stdout)
    recorded = calls(tmp_path)
    assert len(recorded) == 1, recorded
    serial = hsm.serial_of(token.label)
    expected = f"Enter PIN for token '{token.label}' (serial {serial}) (store pkcs11-0): "
    assert f"prompt={expected}|" in recorded[0], recorded[0]
    assert f"pp={expected}" in recorded[0], recorded[0]
