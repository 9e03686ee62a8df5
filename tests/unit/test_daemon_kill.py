"""`agent --kill`: which argv counts as a secretivex agent (AUDIT-REPORT F5). The
processes themselves are in tests/security/test_12_kill_and_config_owners.py."""

from __future__ import annotations

import pytest

from secretivex.cli.daemon import is_agent_invocation


@pytest.mark.parametrize(
    "argv",
    [
        "secretivex agent",
        "/usr/bin/secretivex agent --socket /run/secretivex/agent.sock",
        "/usr/bin/python3 /usr/bin/secretivex agent --daemon",
        "/opt/venv/bin/python3.11 /opt/venv/bin/secretivex agent",
        "python3 -m secretivex agent",
        "python3 -I -X importtime -m secretivex agent",
        "/nix/store/x-python3-3.11/bin/python3.11 /nix/store/y-secretivex/bin/.secretivex-wrapped"
        " agent",
    ],
)
def test_agent_invocations(argv: str) -> None:
    assert is_agent_invocation([part.encode() for part in argv.split()])


@pytest.mark.parametrize(
    "argv",
    [
        "less /home/someone/secretivex-notes.txt",
        "vim /home/someone/src/secretivex/x.py",
        "secretivex client list",
        "secretivex config validate agent",
        "python3 -m pytest tests/secretivex agent",
        "vim secretivex agent",
        "python3 -c import secretivex agent",
        "bash -c secretivex agent",
        "",
    ],
)
def test_not_agent_invocations(argv: str) -> None:
    assert not is_agent_invocation([part.encode() for part in argv.split()] if argv else [])
