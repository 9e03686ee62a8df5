"""Every example in config/ validates, against the models and the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from secretivex.config import ConfigPaths, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
# Examples that name nothing host-specific validate with path checks on, anywhere.
PORTABLE = {"minimal.yaml", "ci-runner.yaml", "shared-host.yaml", "upstream-filter.yaml"}


def test_the_documented_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "minimal.yaml",
        "workstation.yaml",
        "ci-runner.yaml",
        "shared-host.yaml",
        "pkcs11-softhsm.yaml",
        "upstream-filter.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path, tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    if path.name in PORTABLE:
        # The audit log's directory (/var/log/secretivex) is this host's: the agent, and
        # so the path checks, refuse one that does not exist. Its value is checked by
        # the run without path checks below.
        env["SECRETIVEX_AUDIT__PATH"] = str(tmp_path / "audit.jsonl")
    loaded = load_config(
        config_files=[path],
        env=env,
        paths=ConfigPaths.isolated(),
        check_paths=path.name in PORTABLE,
    )
    assert loaded.files == [path]
    unchecked = load_config(
        config_files=[path],
        env={"XDG_RUNTIME_DIR": "/run/user/1000"},
        paths=ConfigPaths.isolated(),
        check_paths=False,
    )
    assert unchecked.files == [path]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_matches_json_schema(path: Path) -> None:
    schema = json.loads((ROOT / "config" / "secretivex.schema.json").read_text())
    errors = [
        e.message
        for e in jsonschema.Draft202012Validator(schema).iter_errors(
            yaml.safe_load(path.read_text())
        )
    ]
    assert errors == []


def test_examples_show_their_intent() -> None:
    def load(name: str) -> object:
        return load_config(
            config_files=[ROOT / "config" / name],
            env={},
            paths=ConfigPaths.isolated(),
            check_paths=False,
        ).config

    workstation = load("workstation.yaml")
    assert workstation.policy.confirm.command  # type: ignore[attr-defined]
    ci = load("ci-runner.yaml")
    assert ci.listeners[0].keys and ci.listeners[0].peers.gids  # type: ignore[attr-defined]
    shared = load("shared-host.yaml")
    assert all(listener.peers.gids for listener in shared.listeners)  # type: ignore[attr-defined]
    hsm = load("pkcs11-softhsm.yaml")
    assert hsm.stores[0].module == Path("/usr/lib/softhsm/libsofthsm2.so")  # type: ignore[attr-defined]
    upstream = load("upstream-filter.yaml")
    assert upstream.stores[0].type == "upstream"  # type: ignore[attr-defined]
