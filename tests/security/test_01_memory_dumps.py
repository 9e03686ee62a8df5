"""Issue 11 item 1: another process of the agent's uid can read neither its memory nor
its environment, and a crash writes no core file (as OpenSSH's ssh-agent:
prctl(PR_SET_DUMPABLE, 0) and RLIMIT_CORE 0 before any key is read). Passphrase/PIN
variables leave the environment once read, yet a SIGHUP reload still decrypts keys.

Each attack also runs against a control that lacks the defence (a plain Python process
of the same uid holding the same seed), which proves the attack works on this machine,
and against OpenSSH's ssh-agent, which refuses it as we do."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_ssh_private_key,
)
from harness import fingerprint_of, keygen, require_tool, run, running_agent, wait_for_socket
from sec_a_helpers import (
    NOBODY,
    as_uid,
    attack,
    give,
    need_root_and_setpriv,
    python_for,
    start_agent_as,
    start_holder,
    uid_dir,
    wait_until,
)

PASSPHRASE = "correct horse battery staple 4711"
REFUSED = ("EACCES", "EPERM")


def _seed(key_path: Path, passphrase: str) -> bytes:
    key = load_ssh_private_key(key_path.read_bytes(), passphrase.encode())
    assert isinstance(key, Ed25519PrivateKey)
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _encrypted_key_and_config(home: Path) -> tuple[Path, Path]:
    key = give(keygen(home, "id_ed25519", passphrase=PASSPHRASE, comment="sec-a"), NOBODY)
    give(key.with_suffix(".pub"), NOBODY, 0o644)
    config = home / "agent.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{key}]\n"
        "    passphrase_env: SECRETIVEX_KEY_PASSPHRASE\n"
    )
    give(config, NOBODY)
    return key, config


def _askpass(home: Path) -> Path:
    script = home / "askpass.sh"
    script.write_text(f"#!/bin/sh\necho '{PASSPHRASE}'\n")
    return give(script, NOBODY, 0o755)


def test_same_uid_process_cannot_read_agent_memory_or_environment() -> None:
    need_root_and_setpriv()
    require_tool("ssh-keygen", "ssh-add", "ssh-agent")
    with uid_dir(NOBODY) as home:
        key, config = _encrypted_key_and_config(home)
        seed = _seed(key, PASSPHRASE)

        # Control: a same-uid Python process without the defence. The attack works here.
        holder = start_holder(NOBODY, key, PASSPHRASE)
        try:
            before = attack(NOBODY, holder.pid, seed, PASSPHRASE)
            root_view_holder = Path(f"/proc/{holder.pid}/environ").read_bytes()
        finally:
            holder.kill()
            holder.wait()
        assert before["mem"] == "seed-found", before
        assert before["environ"] == "secret-found", before
        assert PASSPHRASE.encode() in root_view_holder

        agent = start_agent_as(
            NOBODY, home, ["--config", str(config)], env={"SECRETIVEX_KEY_PASSPHRASE": PASSPHRASE}
        )
        try:
            listed = run(["ssh-add", "-l"], env={"SSH_AUTH_SOCK": str(agent.socket)}).stdout
            assert fingerprint_of(key.with_suffix(".pub")) in listed  # the seed is in memory
            after = attack(NOBODY, agent.proc.pid, seed, PASSPHRASE)
            # Root still reads /proc/PID/environ, but the value was wiped once read.
            root_view_agent = Path(f"/proc/{agent.proc.pid}/environ").read_bytes()
            limits = Path(f"/proc/{agent.proc.pid}/limits").read_text()
        finally:
            agent.stop()
        assert after["uid"] == NOBODY
        assert after["mem"] in REFUSED, after
        assert after["environ"] in REFUSED, after
        assert after["maps"] in REFUSED, after
        assert PASSPHRASE.encode() not in root_view_agent
        assert b"SECRETIVEX_KEY_PASSPHRASE=" in root_view_agent  # same variable, value gone
        core_line = next(line for line in limits.splitlines() if "core file" in line)
        assert core_line.split()[4:6] == ["0", "0"], core_line

        # OpenSSH's ssh-agent, same uid, same key added: refused the same way.
        ssh_sock = home / "run" / "ssh-agent.sock"
        ssh_agent = subprocess.Popen(
            as_uid(NOBODY, ["ssh-agent", "-D", "-a", str(ssh_sock)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_socket(ssh_sock, proc=ssh_agent)  # type: ignore[arg-type]
            run(
                ["ssh-add", str(key)],
                env={
                    "SSH_AUTH_SOCK": str(ssh_sock),
                    "SSH_ASKPASS": str(_askpass(home)),
                    "SSH_ASKPASS_REQUIRE": "force",
                    "DISPLAY": ":0",
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                },
                input=b"",
            )
            openssh = attack(NOBODY, ssh_agent.pid, seed, PASSPHRASE)
        finally:
            ssh_agent.terminate()
            ssh_agent.wait()
        assert openssh["mem"] in REFUSED and openssh["environ"] in REFUSED, openssh
        print(f"\ncontrol: {before}\nsecretivex: {after}\nssh-agent: {openssh}")


def _core_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("core"))


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT], ids=["SEGV", "ABRT"])
def test_crash_writes_no_core_file(signum: signal.Signals) -> None:
    need_root_and_setpriv()
    require_tool("prlimit", "ssh-keygen")
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    # A plain relative pattern ("core", "core.%p"...) writes into the crashing process's
    # cwd, which we can look at; a pipe or an absolute path goes elsewhere, so then the
    # proof is RLIMIT_CORE 0 plus non-dumpable (either alone suppresses the core).
    core_in_cwd = not pattern.startswith("|") and "/" not in pattern
    unlimited = ["prlimit", "--core=unlimited:unlimited", "--"]
    with uid_dir(NOBODY) as home:
        _key, config = _encrypted_key_and_config(home)
        crash_dir = home / "crash"
        crash_dir.mkdir()
        give(crash_dir, NOBODY, 0o700)

        if core_in_cwd:
            # Control: a plain same-uid Python process dumps core here when it crashes.
            control_dir = home / "control"
            control_dir.mkdir()
            give(control_dir, NOBODY, 0o700)
            control = subprocess.run(
                [
                    *unlimited,
                    *as_uid(
                        NOBODY,
                        [
                            python_for(NOBODY)[0],
                            "-c",
                            f"import os; os.kill(os.getpid(), {int(signum)})",
                        ],
                    ),
                ],
                cwd=control_dir,
                capture_output=True,
                timeout=60,
            )
            assert control.returncode in (-signum, 128 + signum), control
            assert _core_files(control_dir), f"control did not dump core (pattern {pattern!r})"

        agent = start_agent_as(
            NOBODY,
            home,
            ["--config", str(config)],
            env={"SECRETIVEX_KEY_PASSPHRASE": PASSPHRASE},
            prefix=unlimited,
            cwd=crash_dir,
        )
        pid = agent.proc.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        environ_owner = os.stat(f"/proc/{pid}/environ").st_uid
        os.kill(pid, signum)
        agent.proc.wait(30)
        assert agent.proc.returncode == -signum, agent.log()
        time.sleep(0.5)  # a core would have been written before the exit status
        core_line = next(line for line in limits.splitlines() if "core file" in line)
        assert core_line.split()[4:6] == ["0", "0"], core_line
        # Non-dumpable: the kernel hands the process's /proc files to root.
        assert environ_owner == 0
        if core_in_cwd:
            assert _core_files(crash_dir) == []


def test_passphrase_variable_leaves_environment_and_reload_still_decrypts(
    tmp_path: Path,
) -> None:
    require_tool("ssh-keygen", "ssh-add")
    keys = tmp_path / "keys"
    keys.mkdir()
    first = keygen(keys, "id_ed25519", passphrase=PASSPHRASE, comment="first")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"stores:\n  - type: file\n    paths: [{first}]\n"
        "    passphrase_env: SECRETIVEX_KEY_PASSPHRASE\n"
    )
    with running_agent(
        tmp_path, "--config", str(config), env={"SECRETIVEX_KEY_PASSPHRASE": PASSPHRASE}
    ) as agent:
        first_fp = fingerprint_of(first.with_suffix(".pub"))
        assert first_fp in agent.ssh_add("-l").stdout
        environ = Path(f"/proc/{agent.proc.pid}/environ").read_bytes()
        assert PASSPHRASE.encode() not in environ

        # Replace the key file by another key under the same passphrase, then reload: the
        # agent decrypts it with the value it kept in memory.
        replacement = keygen(tmp_path, "other", passphrase=PASSPHRASE, comment="second")
        os.replace(replacement, first)
        os.replace(replacement.with_suffix(".pub"), first.with_suffix(".pub"))
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "configuration reloaded" in agent.log(), 30), agent.log()
        listing = agent.ssh_add("-l").stdout
        assert fingerprint_of(first.with_suffix(".pub")) in listing
        assert first_fp not in listing
        assert "passphrase environment variable" not in agent.log()


def test_secret_reader_takes_variable_out_of_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the one reader used by file and PKCS#11 stores removes the variable
    from os.environ when the store is built, keeps the value, and warns (once, naming
    the file, never its content) about a PIN file group/others can read."""
    from secretivex.stores.pkcs11 import pin_from_env, pin_from_file
    from secretivex.stores.secrets import secret_reader

    monkeypatch.setenv("SECA_TEST_PASSPHRASE", "hunter2-passphrase")
    monkeypatch.setenv("SECA_TEST_PIN", "123456")
    read_passphrase = secret_reader("SECA_TEST_PASSPHRASE", None)
    read_pin = pin_from_env("SECA_TEST_PIN")
    assert "SECA_TEST_PASSPHRASE" not in os.environ and "SECA_TEST_PIN" not in os.environ
    assert read_passphrase() == b"hunter2-passphrase"
    assert read_pin() == b"123456" and read_pin() == b"123456"
    assert "hunter2" not in repr(read_pin) and "123456" not in repr(read_pin)

    import logging

    pin_file = tmp_path / "pin"
    pin_file.write_text("98765\nignored\n")
    pin_file.chmod(0o644)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("secretivex.stores.secrets").addHandler(handler)
    try:
        source = pin_from_file(pin_file)
        assert source() == b"98765" and source() == b"98765"
    finally:
        logging.getLogger("secretivex.stores.secrets").removeHandler(handler)
    assert len(records) == 1 and str(pin_file) in records[0] and "98765" not in records[0]
