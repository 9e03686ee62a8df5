"""Bench output people read: progress lines in CI logs, latency plots next to the
compare table. Real agents (secretivex and OpenSSH's ssh-agent), real bench runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import SECRETIVEX, keygen, require_tool, running_agent, wait_for_socket


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SECRETIVEX, "bench", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture
def openssh_agent(tmp_path: Path) -> Iterator[Path]:
    require_tool("ssh-agent", "ssh-add", "ssh-keygen")
    key = keygen(tmp_path, "ossh", "ed25519")
    sock = tmp_path / "ossh.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_socket(sock, proc=proc)
        subprocess.run(
            ["ssh-add", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(sock)},
            check=True, capture_output=True,
        )  # fmt: skip
        yield sock
    finally:
        proc.terminate()
        proc.wait(30)


def test_progress_prints_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "bench", "ed25519")
    with running_agent(tmp_path, "--key", str(keys)) as agent:
        # stderr is a pipe here, as in a CI log.
        result = bench("run", "--socket", str(agent.socket), "-c", "1", "-d", "5s", "--progress")
        quiet = bench("run", "--socket", str(agent.socket), "-c", "1", "-n", "50")
    assert result.returncode == 0, result.stderr
    periodic = [
        line for line in result.stderr.splitlines()
        if re.fullmatch(r"bench: [\d,]+ requests, \d+%, [\d,]+ req/s, [\d.]+s elapsed", line)
    ]  # fmt: skip
    assert periodic, result.stderr
    assert re.search(r"^bench: done, [\d,]+ requests in [\d.]+s$", result.stderr, re.M)
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log
    assert "rps" in result.stdout or "req" in result.stdout  # the report is still printed
    assert quiet.returncode == 0 and "bench:" not in quiet.stderr  # default: no progress


def _runs(tmp_path: Path, sockets: dict[str, Path]) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    for agent, sock in sockets.items():
        for n in (1, 2):
            out = runs / f"ed25519__{agent}__{n}.json"
            done = bench("run", "--socket", str(sock), "-c", "2", "-n", "200", "--out", str(out))
            assert done.returncode == 0, done.stderr
    return runs


def test_compare_writes_a_latency_plot_per_scenario(tmp_path: Path, openssh_agent: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra: pip install 'secretivex[plot]'")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "sx", "ed25519")
    with running_agent(tmp_path, "--key", str(keys)) as agent:
        runs = _runs(tmp_path, {"secretivex": agent.socket, "openssh": openssh_agent})
    out = tmp_path / "report"
    result = bench("compare", str(runs), "--plot-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "| ed25519 | 2 |" in result.stdout
    assert result.stdout.rstrip().endswith("![ed25519: latency distribution](ed25519.latency.svg)")
    svg = (out / "ed25519.latency.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("secretivex (median of 2 run(s))", "openssh (median of 2 run(s))", "p99"):
        assert text in svg, text
    # Default: next to the reports; --json writes none unless asked; png works too.
    assert bench("compare", str(runs)).returncode == 0
    assert (runs / "ed25519.latency.svg").is_file()
    png = bench("compare", str(runs), "--plot-dir", str(out), "--plot-format", "png", "--json")
    assert png.returncode == 0
    assert (out / "ed25519.latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (runs / "ed25519.latency.svg").unlink()
    assert bench("compare", str(runs), "--json").returncode == 0
    assert not (runs / "ed25519.latency.svg").exists()


def test_compare_without_matplotlib_prints_the_table_and_says_why(
    tmp_path: Path, openssh_agent: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "sx", "ed25519")
    with running_agent(tmp_path, "--key", str(keys)) as agent:
        runs = _runs(tmp_path, {"secretivex": agent.socket, "openssh": openssh_agent})
    # The same CLI with matplotlib made unimportable, as on an install without the extra.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from secretivex.cli.main import main\n"
        f"sys.argv = ['secretivex', 'bench', 'compare', {str(runs)!r}]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "| ed25519 | 2 |" in result.stdout and "latency.svg" not in result.stdout
    assert result.stderr.strip() == (
        "secretivex: plots skipped: matplotlib is not installed (pip install 'secretivex[plot]')"
    )
    assert not list(runs.glob("*.svg"))
