"""Issue 11 item 10 (part): a key comment is client input; control characters in it are
escaped in the text log, so a newline cannot forge a log line (JSON logs escape them by
construction)."""

from __future__ import annotations

import json
from pathlib import Path

from harness import keygen, require_tool, running_agent

FORGED = "2026-01-01 00:00:00,000 INFO secretivex: forged"


def test_newline_in_key_comment_cannot_forge_a_log_line(tmp_path: Path) -> None:
    require_tool("ssh-keygen", "ssh-add")
    key = keygen(tmp_path, "evil", comment=f"innocent\n{FORGED}\x1b[2J")
    config = tmp_path / "c.yaml"
    config.write_text("stores: []\nlogging:\n  level: debug\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        agent.ssh_add(str(key))
        log = agent.log()
    assert "innocent\\n" + FORGED + "\\x1b[2J" in log, log  # logged, escaped
    assert not any(line.startswith("2026-01-01") for line in log.splitlines()), log
    assert "\x1b" not in log


def test_json_log_stays_one_object_per_line(tmp_path: Path) -> None:
    require_tool("ssh-keygen", "ssh-add")
    key = keygen(tmp_path, "evil", comment=f"innocent\n{FORGED}")
    config = tmp_path / "c.yaml"
    config.write_text("stores: []\nlogging:\n  format: json\n")
    with running_agent(tmp_path, "--config", str(config)) as agent:
        agent.ssh_add(str(key))
        lines = agent.log().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert any(FORGED in r["message"] for r in records)
