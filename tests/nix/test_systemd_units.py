"""packaging/systemd: the units for non-Nix distros (user/ and system/).

`systemd-analyze verify` must accept them with no warning at all (an unknown key is
only a warning, so an empty stderr is the bar). ExecStart is pointed at the installed
console script, since /usr/bin/secretivex need not exist here. tests/systemd runs them
under a real systemd.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from nixtools import REPO, require_tool

UNITS = REPO / "packaging" / "systemd" / "user"
SYSTEM_UNITS = REPO / "packaging" / "systemd" / "system"


def verify(
    directory: Path, files: list[str] | None = None, user: bool = True
) -> subprocess.CompletedProcess[str]:
    analyze = require_tool("systemd-analyze", "Debian: apt-get install systemd")
    runtime = directory / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "info"}
    names = files or ["secretivex.socket", "secretivex.service"]
    paths = [str(directory / name) for name in names]
    proc = subprocess.run(
        [analyze, *(["--user"] if user else []), "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if proc.returncode != 0 and "Failed to initialize manager" in proc.stderr:
        reason = f"systemd-analyze cannot run here: {proc.stderr.strip()}"
        if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return proc


def staged(tmp_path: Path, secretivex_bin: Path, edit: str = "") -> Path:
    for name in ("secretivex.socket", "secretivex.service"):
        text = (UNITS / name).read_text()
        text = text.replace("ExecStart=/usr/bin/secretivex", f"ExecStart={secretivex_bin}")
        if edit and name.endswith(".service"):
            text = re.sub(r"^\[Service\]$", f"[Service]\n{edit}", text, count=1, flags=re.M)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_units_verify_cleanly(tmp_path: Path, secretivex_bin: Path) -> None:
    proc = verify(staged(tmp_path, secretivex_bin))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_system_units_verify_cleanly(tmp_path: Path, secretivex_bin: Path) -> None:
    names = {
        "secretivex.socket": "secretivex.socket",
        "secretivex-listener@.socket": "secretivex-listener@team.socket",
        "secretivex.service": "secretivex.service",
    }
    for source, target in names.items():
        text = (SYSTEM_UNITS / source).read_text()
        text = text.replace("ExecStart=/usr/bin/secretivex", f"ExecStart={secretivex_bin}")
        (tmp_path / target).write_text(text)
    proc = verify(tmp_path, list(names.values()), user=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_user_sandbox_drop_in_is_what_it_says() -> None:
    """The opt-in sandbox says PrivateUsers=yes (without it systemd skips the mount
    options in user units and fails the capability drops) and nothing it cannot do."""
    text = (UNITS / "sandbox.conf").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "[Service]"
    assert "PrivateUsers=yes" in lines and "ProtectHome=read-only" in lines
    assert not any(ln.startswith("ProtectControlGroups=") for ln in lines)
    service = (UNITS / "secretivex.service").read_text()
    for key in ("ProtectSystem=", "ProtectHome=", "CapabilityBoundingSet=", "PrivateUsers="):
        assert not re.search(rf"^{key}", service, re.M), key


def test_verify_has_teeth(tmp_path: Path, secretivex_bin: Path) -> None:
    proc = verify(staged(tmp_path, secretivex_bin, edit="ProtectHme=yes"))
    assert "Unknown key 'ProtectHme'" in proc.stderr, proc.stderr


def test_units_match_the_nixos_user_mode() -> None:
    """Same contract as the module: socket path, fd name, Type=notify, reload, umask."""
    socket_unit = (UNITS / "secretivex.socket").read_text()
    service = (UNITS / "secretivex.service").read_text()
    assert "ListenStream=%t/secretivex/agent.sock" in socket_unit
    assert "FileDescriptorName=agent" in socket_unit
    assert "SocketMode=0600" in socket_unit
    assert "WantedBy=sockets.target" in socket_unit
    assert re.search(
        r"^ExecStart=/usr/bin/secretivex agent --socket %t/secretivex/agent.sock$", service, re.M
    )
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "UMask=0177",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "KillMode=mixed",
        "StartLimitBurst=3",
        "RestartPreventExitStatus=2",
    ]:
        assert f"\n{line}\n" in service, line
