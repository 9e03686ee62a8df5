"""`secretivex agent` sub-commands that do not start the agent."""

from __future__ import annotations

import json
import subprocess

from harness import SECRETIVEX


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SECRETIVEX, *args], capture_output=True, text=True, timeout=60)


def test_suggest_queue_wait_for_a_profile() -> None:
    text = _run("agent", "suggest-queue-wait", "--profile", "fanout")
    assert text.returncode == 0
    assert "profile fanout" in text.stdout
    quiet = _run("agent", "suggest-queue-wait", "--profile", "fanout", "--quiet")
    values = dict(line.split("=", 1) for line in quiet.stdout.split())
    assert values["profile"] == "fanout"
    assert int(values["tail_ns"]) > 0
    doc = json.loads(_run("agent", "suggest-queue-wait", "-p", "pssh", "--json").stdout)
    assert doc["profile"] == "pssh"


def test_suggest_queue_wait_rejects_bad_input() -> None:
    bad = _run("agent", "suggest-queue-wait", "--profile", "nope")
    assert bad.returncode == 2
    assert "unknown profile" in bad.stderr
    both = _run("agent", "suggest-queue-wait", "--json", "--quiet")
    assert both.returncode == 2
    assert "Traceback" not in both.stderr + bad.stderr


def test_version_and_help() -> None:
    assert _run("--version").stdout.startswith("secretivex ")
    helped = _run("agent", "--help")
    assert helped.returncode == 0
    assert "--print-env" in helped.stdout
