"""Config journeys as a new user meets them, through the real `secretivex` command.

Each test runs the installed CLI in a subprocess with an isolated HOME/XDG, as the
docs (docs/configuration.md) show it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from harness import SECRETIVEX, start_agent

from secretivex.config.schema import SCHEMA_ID, render_schema, shipped_schema_path

REPO = Path(__file__).resolve().parents[2]


def cli(
    tmp: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SECRETIVEX_", "XDG_"))}
    full.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    full.update(env or {})
    return subprocess.run(
        [SECRETIVEX, *args], capture_output=True, text=True, env=full, timeout=120
    )


def test_cross_key_problems_reported_with_field_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "agent:\n"
        f"  socket: {tmp_path}/agent.sock\n"
        "  max_signers: zero\n"  # a field error...
        "listeners:\n"
        f"  - socket: {tmp_path}/agent.sock\n"  # ...and three cross-key ones
        f"  - socket: {tmp_path}/ci.sock\n"
        f"  - socket: {tmp_path}/ci.sock\n"
        "stores:\n"
        "  - type: upstream\n"
        f"    socket: {tmp_path}/ci.sock\n"
    )
    result = cli(tmp_path, "config", "validate", str(cfg))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{cfg}:3: agent.max_signers: expected a whole number, got 'zero'",
        f"{cfg}:5: listeners[0].socket: this is the agent's main socket (agent.socket)",
        f"{cfg}:7: listeners[2].socket: socket already used by listeners[1]",
        f"{cfg}:10: stores[0].socket: upstream socket is one of this agent's own sockets: "
        "requests would loop back into the agent",
    ]


WARNING = (
    "env:SECRETIVEX_AGENT_MAX_SIGNERS: ignored, maps to no config key - "
    "did you mean SECRETIVEX_AGENT__MAX_SIGNERS?"
)


def test_one_underscore_variable_warned_by_validate_show_and_agent(tmp_path: Path) -> None:
    env = {"SECRETIVEX_AGENT_MAX_SIGNERS": "4", "SECRETIVEX_PKCS11_PIN": "1234"}
    validated = cli(tmp_path, "config", "validate", "--no-path-checks", env=env)
    assert validated.returncode == 0
    assert validated.stdout == "OK\n"
    assert validated.stderr == f"warning: {WARNING}\n"  # the PIN variable is no key: silent
    shown = cli(tmp_path, "config", "show", "--json", "--no-path-checks", env=env)
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["agent"]["max_signers"] != "4"
    assert f"warning: {WARNING}" in shown.stderr
    agent = start_agent(tmp_path, env=env)
    try:
        log = agent.log()
    finally:
        agent.stop()
    assert any("WARNING" in line and WARNING in line for line in log.splitlines()), log
    # The correct spelling is applied and not warned about.
    fixed = cli(
        tmp_path, "config", "show", "--json", "--no-path-checks",
        env={"SECRETIVEX_AGENT__MAX_SIGNERS": "4"},
    )  # fmt: skip
    assert json.loads(fixed.stdout)["agent"]["max_signers"] == 4
    assert "warning" not in fixed.stderr


def test_variable_named_by_the_config_is_not_warned(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "stores:\n  - type: file\n    paths: [~/.ssh]\n"
        "    passphrase_env: SECRETIVEX_AGENT_PASSPHRASE\n"
    )
    result = cli(
        tmp_path, "config", "validate", "--config", str(cfg),
        env={"SECRETIVEX_AGENT_PASSPHRASE": "x"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert result.stderr == ""


def test_command_string_and_home_variable_hints(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "policy:\n  confirm:\n    command: zenity --question --text='Allow a signature?'\n"
        "stores:\n  - type: file\n    paths: [$HOME/.ssh/id_ed25519, '${HOME}/keys']\n"
    )
    result = cli(tmp_path, "config", "validate", str(cfg))
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f'{cfg}:3: policy.confirm.command: expected a list, got "zenity --question '
        "--text='Allow a signature?'\" - argv is a list, not a shell line: write "
        "[zenity, --question, '--text=Allow a signature?']"
    )
    assert "variables are not expanded" in lines[1] and "write '~/.ssh/id_ed25519'" in lines[1]
    assert "${HOME}" in lines[2] and "write '~/keys'" in lines[2]
    # The suggested spellings are accepted as written.
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(
        "policy:\n  confirm:\n    command: [/bin/true, --question, '--text=Allow a signature?']\n"
        "stores:\n  - type: file\n    paths: ['~/.ssh/id_ed25519', '~/keys']\n"
    )
    assert cli(tmp_path, "config", "validate", str(fixed)).stdout == "OK\n"


def test_validate_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  max_conections: 4\n")
    result = cli(tmp_path, "config", "validate", "--json", str(bad))
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert document["ok"] is False
    (problem,) = document["problems"]
    assert problem == {
        "source": str(bad),
        "key_path": "agent.max_conections",
        "line": 2,
        "column": 3,
        "message": "unknown key 'max_conections' - did you mean 'max_connections'?",
        "text": f"{bad}:2: agent.max_conections: unknown key 'max_conections' - did you mean "
        "'max_connections'?",
    }
    good = cli(
        tmp_path, "config", "validate", "--json", "--no-path-checks",
        env={"SECRETIVEX_LOGGING_LEVEL": "debug"},
    )  # fmt: skip
    assert good.returncode == 0
    document = json.loads(good.stdout)
    assert document["ok"] is True and document["problems"] == []
    assert [w["source"] for w in document["warnings"]] == ["env:SECRETIVEX_LOGGING_LEVEL"]


def test_schema_shipped_with_id_and_typed_store_errors() -> None:
    shipped = shipped_schema_path()
    assert shipped.read_text() == render_schema()
    assert (REPO / "config" / "secretivex.schema.json").read_text() == render_schema()
    schema = json.loads(render_schema())
    assert schema["$id"] == SCHEMA_ID
    validator = jsonschema.Draft202012Validator(schema)
    cases = {
        "'module' is a required property": {"stores": [{"type": "pkcs11", "token_label": "x"}]},
        "'nope' is not one of ['file', 'pkcs11', 'upstream']": {"stores": [{"type": "nope"}]},
        "'pathz' was unexpected": {"stores": [{"type": "file", "pathz": ["/k"]}]},
        "'type' is a required property": {"stores": [{"paths": ["/k"]}]},
    }
    for expected, document in cases.items():
        messages = [e.message for e in validator.iter_errors(document)]
        assert any(expected in m for m in messages), (expected, messages)
        assert not any("any of the given schemas" in m for m in messages), messages
    assert not list(validator.iter_errors({"stores": [{"type": "file", "paths": ["/k"]}]}))


def test_schema_path_command(tmp_path: Path) -> None:
    result = cli(tmp_path, "config", "schema", "--path")
    assert result.returncode == 0
    assert json.loads(Path(result.stdout.strip()).read_text())["$id"] == SCHEMA_ID


def test_docs_yaml_language_server_line_works(tmp_path: Path) -> None:
    """docs/configuration.md: the schema command, then a file whose first line names it.
    The $schema reference resolves (relative to the file, as yaml-language-server does)
    to a schema that accepts the example and rejects a typo."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    section = doc.split("### Editor support (JSON Schema)", 1)[1]
    command = re.search(r"```sh\n(secretivex config schema > \S+)\n```", section)
    example = re.search(r"```yaml\n(# yaml-language-server: \$schema=(\S+)\n.*?)```", section, re.S)
    assert command and example
    home = tmp_path / "home"
    (home / ".config" / "secretivex").mkdir(parents=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(SECRETIVEX).parent}:{os.environ['PATH']}",
    }
    subprocess.run(["bash", "-c", command.group(1)], env=env, check=True, timeout=60)
    config = home / ".config" / "secretivex" / "config.yaml"
    config.write_text(example.group(1))
    schema_path = (config.parent / example.group(2)).resolve()
    validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))
    assert not list(validator.iter_errors(yaml.safe_load(config.read_text())))
    typo = yaml.safe_load(config.read_text().replace("profile:", "profil:"))
    assert any("'profil' was unexpected" in e.message for e in validator.iter_errors(typo))
    # ...and the config itself is valid for the agent.
    assert cli(tmp_path, "config", "validate", str(config)).stdout == "OK\n"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_examples_schema_lines_resolve(name: str) -> None:
    """Every example config's `$schema=` line points at a file that exists."""
    first = (REPO / "config" / name).read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    if match is None:
        pytest.skip(f"{name} has no schema line")
    assert (REPO / "config" / match.group(1)).resolve().is_file()
