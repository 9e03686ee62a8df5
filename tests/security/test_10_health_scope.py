"""Item 10: ``health@secretivex`` tells a scoped listener only what it may see.

Attacker: another uid admitted by a scoped listener (setpriv), running the real
``secretivex client health``. Before, it learnt the paths of out-of-scope key files,
every listener's socket and the whole agent's connection count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import SECRETIVEX, keygen, require_tool, run, running_agent
from sec_c_helpers import NOBODY, as_uid, shared_dir

pytestmark = pytest.mark.openssh


def test_health_on_a_scoped_listener_shows_only_its_scope(tmp_path: Path) -> None:
    require_tool("ssh-keygen", "setpriv")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "ci_deploy", comment="ci-deploy")
    keygen(keys, "secret_personal", comment="alice-personal")
    with shared_dir() as shared:
        scoped, other = shared / "ci.sock", shared / "team.sock"
        config = tmp_path / "c.yaml"
        config.write_text(
            "stores:\n"
            f"  - type: file\n    name: laptop\n    paths: [{keys}]\n"
            f"  - type: file\n    name: personal-only\n    paths: [{keys / 'secret_personal'}]\n"
            "listeners:\n"
            f"  - socket: {scoped}\n    mode: '0666'\n    keys: ['comment:ci-*']\n"
            f"    peers: {{uids: [{NOBODY}]}}\n"
            f"  - socket: {other}\n    mode: '0600'\n    keys: ['comment:alice-*']\n"
        )
        with running_agent(tmp_path, "--config", str(config)) as agent:
            health = [SECRETIVEX, "client", "health", "--json", "--socket"]
            seen = as_uid([*health, str(scoped)], agent.env)
            assert seen.returncode == 0, seen.stderr
            doc = json.loads(seen.stdout)["agent"]
            main = json.loads(run([*health, str(agent.socket)], env=agent.env).stdout)["agent"]

    text = json.dumps(doc)
    assert "secret_personal" not in text and str(keys) not in text
    assert str(other) not in text and str(agent.socket) not in text
    assert "connections" not in doc
    # Only the store it sees keys of, counted over its own keys, without detail.
    assert [(s["name"], s["keys"], s["detail"]) for s in doc["stores"]] == [("laptop", 1, {})]
    assert [entry["socket"] for entry in doc["listeners"]] == [str(scoped)]
    # The main socket still shows everything.
    main_text = json.dumps(main)
    assert "secret_personal" in main_text and str(other) in main_text
    assert {s["name"] for s in main["stores"]} >= {"laptop", "personal-only", "memory"}
    assert "connections" in main
