"""Issue 11 item 7: the confirm hook gets a minimal environment (never PINs or
passphrases), at most ``policy.confirm.max_concurrent`` hooks run at once (the rest
queue, and run out of ``timeout_ms`` as denials), the hook's whole process group dies
when its request is cancelled (client hung up, agent stopping), and a confirmation that
cannot be asked is a logged, explained denial."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from harness import keygen, require_tool, running_agent, start_agent
from sec_a_helpers import proc_gone, wait_until

PASSPHRASE = "never-show-this-passphrase-9f3a"
FAKE_PIN = "never-show-this-pin-55501"
ALLOWED_NAMES = {
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_RUNTIME_DIR",
    "XAUTHORITY",
    "DBUS_SESSION_BUS_ADDRESS",
}


def _script(path: Path, body: str, shebang: str = "/bin/sh") -> Path:
    path.write_text(f"#!{shebang}\n{body}\n")
    path.chmod(0o755)
    return path


def _blob(pub: Path) -> bytes:
    return base64.b64decode(pub.read_text().split()[1])


def _sign_frame(blob: bytes, data: bytes = b"payload") -> bytes:
    body = bytes([13]) + struct.pack(">I", len(blob)) + blob
    body += struct.pack(">I", len(data)) + data + struct.pack(">I", 0)
    return struct.pack(">I", len(body)) + body


def _sign(sock: Path, blob: bytes) -> int:
    """One sign request on its own connection; returns the reply's message type."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(str(sock))
        s.sendall(_sign_frame(blob))
        header = s.recv(4, socket.MSG_WAITALL)
        if len(header) < 4:
            return -1  # the agent closed the connection without an answer
        (length,) = struct.unpack(">I", header)
        reply = s.recv(length, socket.MSG_WAITALL)
    return reply[0]


def _audit(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _hooks_running(marker: str) -> set[int]:
    """Process groups (one per hook: each runs in its own session) with a live process
    whose command line mentions ``marker`` (a shell forking a command counts once)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if marker.encode() in cmdline and fields[0] not in "ZX":
            groups.add(int(fields[2]))
    return groups


def test_hook_environment_is_minimal(tmp_path: Path) -> None:
    require_tool("ssh-keygen")
    key = keygen(tmp_path, "id_ed25519", passphrase=PASSPHRASE, comment="hooked")
    dump = tmp_path / "hook-env.json"
    hook = _script(
        tmp_path / "dump-env.py",
        f"import json, os\nopen({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))",
        shebang=os.path.realpath(sys.executable),
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        "    passphrase_env: SECRETIVEX_KEY_PASSPHRASE\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n"
    )
    env = {
        "SECRETIVEX_KEY_PASSPHRASE": PASSPHRASE,
        "SECRETIVEX_PKCS11_PIN": FAKE_PIN,
        "AWS_SECRET_ACCESS_KEY": FAKE_PIN,
        "DISPLAY": ":7",
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
    }
    with running_agent(tmp_path, "--config", str(config), env=env) as agent:
        assert _sign(agent.socket, _blob(key.with_suffix(".pub"))) == 14  # SIGN_RESPONSE
    seen: dict[str, str] = json.loads(dump.read_text())
    unexpected = {
        name
        for name in seen
        if name not in ALLOWED_NAMES and not name.startswith(("LC_", "SECRETIVEX_CONFIRM_"))
    }
    assert unexpected == set(), seen
    assert not any(PASSPHRASE in v or FAKE_PIN in v for v in seen.values())
    assert (seen["DISPLAY"], seen["LANG"], seen["LC_TIME"]) == (":7", "C.UTF-8", "C")
    assert seen["SECRETIVEX_CONFIRM_KEY_TYPE"] == "ssh-ed25519"
    assert seen["PATH"]


def test_concurrent_hooks_are_capped_and_queued_requests_run_out_of_time(
    tmp_path: Path,
) -> None:
    require_tool("ssh-keygen")
    key = keygen(tmp_path, "id_ed25519", comment="capped")
    hook = _script(tmp_path / "slow-allow.sh", "sleep 4\nexit 0")
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    # Default max_concurrent (4). Each hook allows after 4 s; timeout_ms (6 s) bounds
    # queueing plus the hook, so the 4 requests queued behind the first 4 get a slot
    # with about 2 s left and are denied as confirm_timeout (2 s margins both ways).
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n    timeout_ms: 6000\n"
        f"audit:\n  path: {audit}\n"
    )
    blob = _blob(key.with_suffix(".pub"))
    with running_agent(tmp_path, "--config", str(config)) as agent:
        replies: list[int] = []
        threads = [
            threading.Thread(target=lambda: replies.append(_sign(agent.socket, blob)))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        most = 0
        while any(t.is_alive() for t in threads):
            most = max(most, len(_hooks_running(str(hook))))
            time.sleep(0.01)
        for thread in threads:
            thread.join()
        assert wait_until(lambda: not _hooks_running(str(hook)), 10)
    assert most == 4, f"at most 4 hooks at once, and the cap was reached (saw {most})"
    assert sorted(replies) == [5] * 4 + [14] * 4  # 4 FAILURE, 4 SIGN_RESPONSE
    signs = [r for r in _audit(audit) if r["request"] == "sign"]
    outcomes = sorted(str(r["outcome"]) for r in signs)
    assert outcomes == ["confirm_timeout"] * 4 + ["ok"] * 4, signs
    denied = [r for r in signs if r["outcome"] == "confirm_timeout"]
    assert all(r.get("detail") for r in denied), denied


def test_hook_process_group_killed_when_client_hangs_up_or_agent_stops(
    tmp_path: Path,
) -> None:
    require_tool("ssh-keygen")
    key = keygen(tmp_path, "id_ed25519", comment="hangup")
    pids = tmp_path / "pids"
    pids.mkdir()
    hook = _script(
        tmp_path / "spawner.sh",
        f'sleep 1000 &\necho "$$ $!" > {pids}/"$$".tmp\nmv {pids}/"$$".tmp {pids}/"$$"\nwait',
    )
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        f"policy:\n  confirm:\n    command: [{hook}]\n    timeout_ms: 600000\n"
        f"audit:\n  path: {audit}\n"
    )
    blob = _blob(key.with_suffix(".pub"))

    def hook_and_grandchild() -> tuple[int, int]:
        assert wait_until(lambda: any(pids.iterdir()), 30)
        entry = next(pids.iterdir())
        hook_pid, grandchild = (int(x) for x in entry.read_text().split())
        entry.unlink()
        assert not proc_gone(hook_pid) and not proc_gone(grandchild)
        return hook_pid, grandchild

    # 1. The client hangs up while its confirmation is pending.
    with running_agent(tmp_path, "--config", str(config)) as agent:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(agent.socket))
        client.sendall(_sign_frame(blob))
        hook_pid, grandchild = hook_and_grandchild()
        client.close()
        assert wait_until(lambda: proc_gone(hook_pid) and proc_gone(grandchild), 10), (
            "hook or its grandchild survived the client's hang-up"
        )
        # The agent keeps serving.
        assert "hangup" in agent.ssh_add("-l").stdout
    assert any(r["outcome"] == "confirm_cancelled" for r in _audit(audit))

    # 2. The agent is stopped (SIGTERM) while a confirmation is pending.
    agent = start_agent(tmp_path, "--config", str(config))
    try:
        waiting = threading.Thread(target=_sign, args=(agent.socket, blob), daemon=True)
        waiting.start()
        hook_pid, grandchild = hook_and_grandchild()
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
        assert wait_until(lambda: proc_gone(hook_pid) and proc_gone(grandchild), 10), (
            "hook or its grandchild survived the agent's exit"
        )
    finally:
        agent.stop()


def test_confirmation_that_cannot_be_asked_is_explained(tmp_path: Path) -> None:
    require_tool("ssh-keygen", "ssh-add")
    key = keygen(tmp_path, "id_ed25519", comment="needs-confirm")
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: []\naudit:\n  path: {audit}\n")
    env = {"SSH_ASKPASS": ""}
    with running_agent(tmp_path, "--config", str(config), env=env) as agent:
        agent.ssh_add("-c", str(key), extra_env={"SSH_ASKPASS": ""})
        assert _sign(agent.socket, _blob(key.with_suffix(".pub"))) == 5  # FAILURE
        log = agent.log()
    reason = "no confirm command and SSH_ASKPASS unset"
    warnings = [line for line in log.splitlines() if " WARNING " in line and reason in line]
    assert len(warnings) == 1, log
    denied = [r for r in _audit(audit) if r["request"] == "sign"]
    assert [(r["outcome"], r.get("detail")) for r in denied] == [("confirm_error", reason)]


def test_askpass_fallback_gets_the_same_minimal_environment(tmp_path: Path) -> None:
    """``ssh-add -c`` keys with no hook configured ask SSH_ASKPASS, as OpenSSH does; it
    sees SSH_ASKPASS/SSH_ASKPASS_PROMPT besides the minimal set, nothing secret."""
    require_tool("ssh-keygen", "ssh-add")
    key = keygen(tmp_path, "id_ed25519", comment="askpass-confirmed")
    dump = tmp_path / "askpass-env.json"
    askpass = _script(
        tmp_path / "askpass.py",
        "import json, os, sys\n"
        f"open({str(dump)!r}, 'w').write(json.dumps({{'env': dict(os.environ), "
        "'argv': sys.argv[1:]}))",
        shebang=os.path.realpath(sys.executable),
    )
    env = {"SSH_ASKPASS": str(askpass), "SECRETIVEX_KEY_PASSPHRASE": PASSPHRASE}
    with running_agent(tmp_path, "--config", str(_empty_config(tmp_path)), env=env) as agent:
        agent.ssh_add("-c", str(key), extra_env={"SSH_ASKPASS": ""})
        assert _sign(agent.socket, _blob(key.with_suffix(".pub"))) == 14
    seen = json.loads(dump.read_text())
    names = set(seen["env"])
    assert {"SSH_ASKPASS", "SSH_ASKPASS_PROMPT"} <= names
    assert seen["env"]["SSH_ASKPASS_PROMPT"] == "confirm"
    assert names - ALLOWED_NAMES - {"SSH_ASKPASS", "SSH_ASKPASS_PROMPT"} == {
        n for n in names if n.startswith(("LC_", "SECRETIVEX_CONFIRM_"))
    }
    assert not any(PASSPHRASE in v for v in seen["env"].values())
    assert "askpass-confirmed" in seen["argv"][0]


def _empty_config(tmp: Path) -> Path:
    config = tmp / "empty.yaml"
    config.write_text("stores: []\n")
    return config


def test_request_queued_past_its_deadline_is_a_timeout_denial() -> None:
    """In-process, real hook process: with the only slot held by a running hook, a
    request whose deadline passes in the queue is denied without ever starting a hook."""
    import anyio

    from secretivex.policy.confirm import TIMEOUT, ConfirmRequest
    from secretivex.policy.engine import Policy

    request = ConfirmRequest("SHA256:x", "k", "ssh-ed25519", 1, "/s", 1, 0, 0, "", ())
    policy = Policy(
        confirm_command=["/bin/sleep", "3"], confirm_timeout_ms=1000, confirm_max_concurrent=1
    )

    async def main() -> tuple[str, str]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(policy.confirm, request)  # holds the slot until its timeout
            await anyio.sleep(0.3)
            with anyio.CancelScope() as scope:
                policy.confirm_timeout_s = 0.2  # this request's whole budget
                verdict = await policy.confirm(request)
            assert not scope.cancelled_caught
            # Denied while the first hook still held the slot: it never left the queue.
            assert policy.confirm_slots.running == 1
            tg.cancel_scope.cancel()  # stops (and kills) the first hook
        return verdict.outcome, verdict.reason

    outcome, reason = anyio.run(main)
    assert outcome == TIMEOUT and "queued behind 1 running" in reason
