"""`secretivex install-units --user` and shell completion, through the real command.

Enabling needs a systemd user manager, which the `systemd` suite (tests/systemd) boots;
here we check what is written, that it is the packaged unit with ExecStart at this
installation, that systemd's own verifier accepts it, and the messages when systemctl
is missing or has no user manager to talk to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import SECRETIVEX, require_tool

REPO = Path(__file__).resolve().parents[2]


def install(tmp: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "HOME": str(tmp),
        "PATH": path if path is not None else os.environ["PATH"],
    }
    return subprocess.run(
        [SECRETIVEX, "install-units", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_without_systemctl_units_are_written_and_the_message_says_what_next(
    tmp_path: Path,
) -> None:
    result = install(tmp_path, "--user", path=str(tmp_path / "empty-bin"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "secretivex: systemctl not found: the units are written but not enabled; on a "
        "systemd host run: systemctl --user enable --now secretivex.socket"
    )
    assert "Traceback" not in result.stderr
    units = tmp_path / "config" / "systemd" / "user"
    service = (units / "secretivex.service").read_text()
    exec_start = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [f"ExecStart={SECRETIVEX} agent --socket %t/secretivex/agent.sock"]
    # Everything else is the packaged unit, line for line.
    for name in ("secretivex.service", "secretivex.socket"):
        written = (units / name).read_text().splitlines()
        packaged = (REPO / "packaging" / "systemd" / "user" / name).read_text().splitlines()
        assert written[0].startswith("# Written by `secretivex install-units --user`")
        assert len(written) == len(packaged) + 1
        for mine, theirs in zip(written[1:], packaged, strict=True):
            if theirs.startswith("ExecStart=/usr/bin/secretivex "):
                assert mine == theirs.replace("/usr/bin/secretivex", SECRETIVEX)
            else:
                assert mine == theirs


def test_no_enable_prints_the_profile_line(tmp_path: Path) -> None:
    result = install(tmp_path, "--user", "--no-enable")
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'export SSH_AUTH_SOCK="$XDG_RUNTIME_DIR/secretivex/agent.sock"\n'
    # The line does what it says in a shell.
    shown = subprocess.run(
        ["bash", "-c", result.stdout + 'echo "$SSH_AUTH_SOCK"'],
        env={**os.environ, "XDG_RUNTIME_DIR": "/run/user/1000"},
        capture_output=True,
        text=True,
    )
    assert shown.stdout == "/run/user/1000/secretivex/agent.sock\n"
    # Rerunning updates its own files; a file someone else wrote needs --force.
    assert install(tmp_path, "--user", "--no-enable").returncode == 0
    foreign = tmp_path / "config" / "systemd" / "user" / "secretivex.socket"
    foreign.write_text("[Socket]\nListenStream=/x\n")
    refused = install(tmp_path, "--user", "--no-enable")
    assert refused.returncode == 1
    assert "was not written by install-units; pass --force" in refused.stderr
    assert foreign.read_text() == "[Socket]\nListenStream=/x\n"
    assert install(tmp_path, "--user", "--no-enable", "--force").returncode == 0
    assert "ListenStream=%t/secretivex/agent.sock" in foreign.read_text()


def test_without_user_manager_the_systemctl_error_is_one_clear_line(tmp_path: Path) -> None:
    require_tool("systemctl")
    probe = subprocess.run(
        ["systemctl", "--user", "show-environment"], capture_output=True, text=True
    )
    if "Failed to connect" not in probe.stderr:
        pytest.skip("a user manager is reachable here; tests/systemd covers enabling")
    result = install(tmp_path, "--user")
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("secretivex: systemctl --user daemon-reload failed: Failed to connect")
    assert "loginctl enable-linger" in last
    # ... and what to run once there is one (the files are there already).
    assert last.endswith(
        "the units are written: once it runs, `secretivex install-units --user` again enables them"
    ), last
    assert (tmp_path / "config" / "systemd" / "user" / "secretivex.socket").exists()


def test_written_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        require_tool("systemd-analyze")
    assert install(tmp_path, "--user", "--no-enable").returncode == 0
    units = tmp_path / "config" / "systemd" / "user"
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700)
    proc = subprocess.run(
        [
            str(analyze), "--user", "verify", "--man=no",
            str(units / "secretivex.socket"), str(units / "secretivex.service"),
        ],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "info"},
    )  # fmt: skip
    if proc.returncode != 0 and "Failed to initialize manager" in proc.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "secretivex" not in proc.stderr, proc.stderr


def test_usage_without_user(tmp_path: Path) -> None:
    result = install(tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("secretivex: install-units needs --user")
    assert "packaging/systemd/user" not in line  # not where a shared agent comes from


def test_system_says_where_system_mode_is(tmp_path: Path) -> None:
    """`--system` is what an operator tries first: one line pointing at the system
    units and the recipe that installs them, exit 2, nothing written."""
    for args in (["--system"], ["--system", "--user"]):
        result = install(tmp_path, *args)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert "packaging/systemd/system/" in line
        assert "A shared host (system mode)" in line
        assert not (tmp_path / "config").exists()
    # and what it points at exists
    assert (REPO / "packaging" / "systemd" / "system" / "secretivex.service").is_file()
    assert "### A shared host (system mode)" in (REPO / "docs" / "quickstart.md").read_text()


def test_bash_completion_completes_subcommands() -> None:
    """`secretivex --show-completion bash` prints a script; its completer answers."""
    # As a person runs it: from bash (the shell is detected from the process tree, so a
    # test started without a shell ancestor would see none; `; :` keeps bash from exec).
    script = subprocess.run(
        ["bash", "-c", f'"{SECRETIVEX}" --show-completion; :'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert script.returncode == 0, script.stderr
    assert "complete" in script.stdout and "_SECRETIVEX_COMPLETE" in script.stdout
    out = subprocess.run(
        [SECRETIVEX],
        env={
            **os.environ,
            "_SECRETIVEX_COMPLETE": "complete_bash",
            "COMP_WORDS": "secretivex con",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "config" in out.stdout.split()


def test_make_run_installs_runtime_dependencies_only(tmp_path: Path) -> None:
    """README: `make run` installs the package without the test/dev extras."""
    require_tool("make")
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "--no-print-directory", "-n", "run", f"VENV={venv}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert plan.returncode == 0, plan.stderr
    installs = [line for line in plan.stdout.splitlines() if " install " in line]
    assert installs[-1].endswith(" -e .") and "pip install" in installs[-1]
    assert not any("[test" in line or "dev]" in line for line in installs)
    assert plan.stdout.rstrip().endswith("secretivex agent --print-env")
