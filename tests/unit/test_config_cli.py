"""`secretivex config validate|show|schema` through typer's CliRunner (and one real process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from secretivex.cli import config_cmd
from secretivex.config import ConfigPaths
from secretivex.config.models import AgentSection
from secretivex.config.schema import render_schema

BROKEN = """
agent:
  max_conections: 64
stores:
  - type: file
  - type: pkcs11
    module: /usr/lib/softhsm/libsofthsm2.so
    pin_env: SECRETIVEX_PKCS11_PIN
    pin_file: /run/credentials/pin
"""


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ConfigPaths:
    """Point the CLI's system/user layers at a temp tree; never read the real /etc."""
    paths = ConfigPaths(
        system_file=tmp_path / "etc" / "config.yaml",
        system_dir=tmp_path / "etc" / "config.d",
        user_file=tmp_path / "xdg" / "secretivex" / "config.yaml",
    )
    monkeypatch.setattr(config_cmd, "default_paths", lambda: paths)
    for name in list(os.environ):
        if name.startswith("SECRETIVEX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    return paths


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(config_cmd.app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback would be a bug
    return result


# --------------------------------------------------------------------------- validate


def test_validate_ok(system: ConfigPaths, tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", "agent:\n  profile: pssh\n")
    result = run("validate", str(path))
    assert (result.exit_code, result.stdout) == (0, "OK\n")


def test_validate_broken_file_one_line_per_problem(system: ConfigPaths, tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", BROKEN)
    result = run("validate", str(path))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{path}:2: agent.max_conections: unknown key 'max_conections' - did you mean "
        "'max_connections'?",
        f"{path}:7: stores[1].pin_env: set only one of pin_env and pin_file",
    ]
    assert result.stderr == ""
    assert "Traceback" not in result.output


def test_validate_never_repeats_a_files_content_as_a_key(
    system: ConfigPaths, tmp_path: Path
) -> None:
    """A line of /etc/shadow ends in ':', so YAML reads it as a key. Through sudo (or in
    an agent's start-up error in the journal) the unknown "section" would print the
    hash; a name no config key could have is not repeated. A typo still is."""
    shadow = write(
        tmp_path / "shadow",
        "root:$6$rounds=5000$saltsalt$HASHhashHASH:19000:0:99999:7:::\n"
        "agent:\n  profil: pssh\n  Bad key/$x: 1\n",
    )
    result = run("validate", str(shadow))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{shadow}:1:1: unknown section whose name is not a config key's (59 characters; "
        "not repeated: it may be a file's content)",
        f"{shadow}:3: agent.profil: unknown key 'profil' - did you mean 'profile'?",
        f"{shadow}:4: agent: unknown key whose name is not a config key's (10 characters; "
        "not repeated: it may be a file's content)",
    ]
    assert "HASH" not in result.output and "$x" not in result.output


def test_validate_several_files_each_on_its_own(system: ConfigPaths, tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "listeners:\n  - socket: /run/x.sock\n")
    b = write(tmp_path / "b.yaml", "listeners:\n  - socket: /run/x.sock\n")
    bad = write(tmp_path / "bad.yaml", "agent: [\n")
    assert run("validate", str(a), str(b)).exit_code == 0
    result = run("validate", str(a), str(bad), str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{bad}:2:1: YAML syntax error: expected the node content, but found '<stream end>' "
        "(while parsing a flow node)",
        f"{tmp_path / 'missing.yaml'}: file not found",
    ]


def test_validate_files_ignores_system_layers_and_env(
    system: ConfigPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert system.system_file is not None
    write(system.system_file, "agent: {bogus: 1}\n")
    monkeypatch.setenv("SECRETIVEX_AGENT__MAX_SIGNERS", "zero")
    path = write(tmp_path / "ok.yaml", "{}\n")
    assert run("validate", str(path)).stdout == "OK\n"
    result = run("validate")
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        # Derived from the model: every agent key, in declaration order.
        f"{system.system_file}:1: agent.bogus: unknown key 'bogus' (expected one of: "
        + ", ".join(AgentSection.model_fields)
        + ")",
        "env:SECRETIVEX_AGENT__MAX_SIGNERS: agent.max_signers: expected a whole number, got 'zero'",
    ]


def test_validate_without_args_reads_agent_layers(
    system: ConfigPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("validate").stdout == "OK\n"
    assert system.system_dir is not None
    bad = write(system.system_dir / "20-bad.yaml", "logging:\n  level: loud\n")
    write(system.system_dir / "10-good.yaml", "logging:\n  level: info\n")
    result = run("validate")
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{bad}:2: logging.level: must be one of 'debug', 'info', 'warning', 'error' or "
        "'critical', got 'loud'"
    ]


def test_validate_with_config_layers_like_the_agent(
    system: ConfigPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write(tmp_path / "a.yaml", "agent:\n  socket: /run/s/agent.sock\n")
    b = write(tmp_path / "b.yaml", "listeners:\n  - socket: /run/s/agent.sock\n")
    assert run("validate", "--config", str(b)).exit_code == 0
    result = run("validate", "--config", str(a), "-c", str(b))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{b}:2: listeners[0].socket: this is the agent's main socket (agent.socket)"
    ]
    monkeypatch.setenv("SECRETIVEX_CONFIG", f"{a}:{b}")
    assert run("validate").exit_code == 2


def test_validate_files_and_config_together_is_a_usage_error(
    system: ConfigPaths, tmp_path: Path
) -> None:
    path = write(tmp_path / "a.yaml", "{}\n")
    result = run("validate", str(path), "--config", str(path))
    assert result.exit_code == 2
    assert "not both" in result.stderr


def test_validate_no_path_checks(system: ConfigPaths, tmp_path: Path) -> None:
    path = write(
        tmp_path / "hsm.yaml",
        "stores:\n  - type: pkcs11\n    module: /nonexistent/libtoken.so\n"
        "listeners:\n  - socket: /run/x.sock\n    group: no-such-group-here\n",
    )
    result = run("validate", str(path))
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 2
    assert run("validate", "--no-path-checks", str(path)).stdout == "OK\n"


def test_unknown_option_is_a_usage_error(system: ConfigPaths) -> None:
    result = CliRunner().invoke(config_cmd.app, ["validate", "--frobnicate"])
    assert result.exit_code == 2


def test_help_teaches(system: ConfigPaths) -> None:
    for command in ("validate", "show", "schema"):
        result = run(command, "--help")
        assert result.exit_code == 0
    text = run("validate", "--help").stdout
    assert "--no-path-checks" in text and "stores[1].pin_env" in text
    assert (
        "secretivex config schema > config/secretivex.schema.json" in run("schema", "--help").stdout
    )


# --------------------------------------------------------------------------- show


def layered(system: ConfigPaths, tmp_path: Path) -> Path:
    assert system.user_file is not None and system.system_file is not None
    write(system.system_file, "agent:\n  allow_add: false\n")
    write(system.user_file, "agent:\n  profile: fanout\nstores:\n  - type: file\n    paths: [/k]\n")
    return write(
        tmp_path / "team.yaml",
        """
        agent:
          max_connections: 4096
        stores:
          - type: pkcs11
            module: /usr/lib/softhsm/libsofthsm2.so
            pin_env: SECRETIVEX_PKCS11_PIN
        listeners:
          - socket: /run/secretivex/ci.sock
            mode: "0660"
            keys: ["comment:ci-*"]
        """,
    )


def test_show_yaml_is_the_effective_config(system: ConfigPaths, tmp_path: Path) -> None:
    team = layered(system, tmp_path)
    result = run("show", "--no-path-checks", "--config", str(team))
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    assert data["agent"]["allow_add"] is False
    assert data["agent"]["max_connections"] == 4096
    assert data["agent"]["sign_timeout_ms"] == 250
    assert data["agent"]["socket"] == "/run/user/1000/secretivex/agent.sock"
    assert data["stores"] == [
        {
            "type": "pkcs11",
            "name": "pkcs11-0",
            "module": "/usr/lib/softhsm/libsofthsm2.so",
            "token_label": None,
            "token_serial": None,
            "slot": None,
            "pin_env": "SECRETIVEX_PKCS11_PIN",
            "pin_file": None,
            "pin_command": None,
            "pin_prompt": None,
            "pin_timeout_ms": 60000,
        }
    ]
    assert data["listeners"][0]["mode"] == "0660"


def test_show_never_prints_secret_values(
    system: ConfigPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    team = layered(system, tmp_path)
    monkeypatch.setenv("SECRETIVEX_PKCS11_PIN", "271828")
    for flags in ([], ["--json"], ["--sources"], ["--json", "--sources"]):
        result = run("show", "--no-path-checks", "-c", str(team), *flags)
        assert result.exit_code == 0
        assert "271828" not in result.stdout
        assert "SECRETIVEX_PKCS11_PIN" in result.stdout


def test_show_sources(system: ConfigPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    team = layered(system, tmp_path)
    monkeypatch.setenv("SECRETIVEX_AGENT__MAX_SIGNERS", "24")
    result = run("show", "--sources", "--no-path-checks", "--config", str(team))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "# effective secretivex configuration",
        f"# files read (lowest first): {system.system_file}, {system.user_file}, {team}",
        f"# profile: fanout on {lines[2].split(' on ')[1]}",
    ]
    body = "\n".join(lines[3:])
    assert f"  allow_add: false  # {system.system_file}:2" in body
    assert f"  profile: fanout  # {system.user_file}:2" in body
    assert f"  max_connections: 4096  # {team}:2" in body
    assert "  max_signers: 24  # env:SECRETIVEX_AGENT__MAX_SIGNERS" in body
    assert "  sign_timeout_ms: 250  # profile:fanout" in body
    assert "  socket: /run/user/1000/secretivex/agent.sock  # default" in body
    assert f"stores:  # {team}:3" in body
    assert f"  - type: pkcs11  # {team}:4" in body
    assert "    name: pkcs11-0  # default" in body
    assert f"    pin_env: SECRETIVEX_PKCS11_PIN  # {team}:6" in body
    assert f"    mode: '0660'  # {team}:9" in body
    assert f"      - 'comment:ci-*'  # {team}:10" in body
    assert "  level: info  # default" in body
    # still valid YAML, and the same data as plain `show`
    plain = run("show", "--no-path-checks", "--config", str(team))
    assert yaml.safe_load(result.stdout) == yaml.safe_load(plain.stdout)


def test_show_json_and_json_sources(system: ConfigPaths, tmp_path: Path) -> None:
    team = layered(system, tmp_path)
    data = json.loads(run("show", "--json", "--no-path-checks", "-c", str(team)).stdout)
    assert data["agent"]["max_connections"] == 4096
    both = json.loads(
        run("show", "--json", "--sources", "--no-path-checks", "-c", str(team)).stdout
    )
    assert both["config"] == data
    assert both["sources"]["stores[0].pin_env"] == f"{team}:6"
    assert both["sources"]["agent.sign_timeout_ms"] == "profile:fanout"


def test_show_invalid_config_exits_2_on_stderr(system: ConfigPaths, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "agent:\n  profile: turbo\n")
    result = run("show", "-c", str(bad))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:2: agent.profile: must be one of 'balanced', 'fanout', 'pssh' or "
        "'low-memory', got 'turbo'"
    ]


def test_show_path_checks_are_on_by_default(system: ConfigPaths, tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "stores:\n  - type: pkcs11\n    module: /nope/x.so\n")
    assert run("show", "-c", str(path)).exit_code == 2
    assert run("show", "--no-path-checks", "-c", str(path)).exit_code == 0


# --------------------------------------------------------------------------- schema


def test_schema_prints_the_json_schema(system: ConfigPaths) -> None:
    result = run("schema")
    assert result.exit_code == 0
    assert result.stdout == render_schema()
    assert json.loads(result.stdout)["properties"]["agent"]["$ref"] == "#/$defs/AgentSection"


# --------------------------------------------------------------------------- real process


def test_installed_command_exit_codes_without_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path / "broken.yaml", "agent:\n  max_signers: 0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETIVEX_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    proc = subprocess.run(
        [sys.executable, "-m", "secretivex", "config", "validate", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == f"{bad}:2: agent.max_signers: must be at least 1, got 0\n"
    assert "Traceback" not in proc.stderr
    ok = write(tmp_path / "ok.yaml", "{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "secretivex", "config", "validate", str(ok)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "OK\n")
