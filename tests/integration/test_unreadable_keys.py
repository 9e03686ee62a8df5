"""A key file the agent may not read is named (WARNING and `client health`), never dropped
silently; a configured path that does not exist is named too.

The agent runs as a non-root uid (setpriv), as in a container running as uid 10001 or a
service user, with one key it owns and one it may not read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SECRETIVEX, keygen, require_tool, wait_for_socket

NOBODY = 65534


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="secretivex-unreadable-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_unreadable_key_named_in_warning_and_health(nobody_dir: Path) -> None:
    require_tool("setpriv", "ssh-keygen", "ssh-add")
    if os.geteuid() != 0:
        pytest.skip("needs root to run the agent as another uid")
    keys = nobody_dir / "keys"
    keys.mkdir()
    readable = keygen(keys, "readable")
    locked = keygen(keys, "locked")
    for path in (keys, readable, readable.with_suffix(".pub"), locked.with_suffix(".pub")):
        os.chown(path, NOBODY, NOBODY)
    locked.chmod(0o600)  # owned by root: uid 65534 may not read it
    missing = nobody_dir / "no-such-dir"
    run_dir = nobody_dir / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    config = nobody_dir / "agent.yaml"
    config.write_text(f"stores:\n  - type: file\n    name: team\n    paths: [{keys}, {missing}]\n")
    sock = run_dir / "agent.sock"
    log_path = nobody_dir / "agent.log"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(nobody_dir),
        "XDG_CONFIG_HOME": str(nobody_dir / "cfg"),
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                "setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                SECRETIVEX, "agent", "--config", str(config), "--socket", str(sock),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_socket(sock, proc=proc)
        listed = subprocess.run(
            ["ssh-add", "-l"], env={**env, "SSH_AUTH_SOCK": str(sock)}, capture_output=True,
            text=True,
        )  # fmt: skip
        assert "readable" in listed.stdout and "locked" not in listed.stdout

        text = subprocess.run(
            [SECRETIVEX, "client", "health", "--socket", str(sock)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        as_json = subprocess.run(
            [SECRETIVEX, "client", "health", "--socket", str(sock), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log_text = log_path.read_text()
    print(text.stdout)
    warning = [line for line in log_text.splitlines() if "WARNING" in line and str(locked) in line]
    assert warning, log_text
    assert "permission denied" in warning[0]
    assert "mode 0600, owner 0:0; the agent runs as uid 65534" in warning[0]
    assert any("WARNING" in line and str(missing) in line for line in log_text.splitlines())

    assert f"skipped: {locked}: permission denied" in text.stdout
    assert f"problem: store team skipped {locked}: permission denied" in text.stdout
    assert f"{missing}: no such file or directory" in text.stdout
    document = json.loads(as_json.stdout)
    (store,) = [s for s in document["agent"]["stores"] if s["name"] == "team"]
    assert store["keys"] == 1
    assert any(str(locked) in item for item in store["detail"]["skipped"])
    assert any(str(missing) in item for item in store["detail"]["skipped"])


def test_root_agent_has_nothing_to_skip(tmp_path: Path) -> None:
    """Control: the same layout read by root skips nothing (the warning is about access)."""
    require_tool("ssh-keygen")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "a")
    locked = keygen(keys, "b")
    locked.chmod(0o600)
    sock = tmp_path / "a.sock"
    proc = subprocess.Popen(
        [SECRETIVEX, "agent", "--key", str(keys), "--socket", str(sock)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "HOME": str(tmp_path)}, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_socket(sock, proc=proc)
        health = subprocess.run(
            [SECRETIVEX, "client", "health", "--socket", str(sock), "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    (store,) = [s for s in json.loads(health.stdout)["agent"]["stores"] if s["name"] == "cli"]
    assert store["keys"] == 2
    assert not store["detail"].get("skipped")
    assert b"permission denied" not in err
