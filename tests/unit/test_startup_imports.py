"""Start-up stays lean: what `secretivex --version` and a real agent import.

Deterministic on purpose (module names, never timings): the measured start-up ratios
live in the bench comparison's extras (ci/compare-openssh.sh, docs/performance.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import secretivex

#: Never on the agent's path: the load generator, the test helpers, the other
#: sub-commands' UX and what only they use.
NOT_FOR_THE_AGENT = (
    "secretivex.bench",
    "secretivex.testing",
    "secretivex.cli.bench_cmd",
    "secretivex.cli.client_cmd",
    "secretivex.cli.config_cmd",
    "secretivex.cli.units_cmd",
    "rich",
    "jsonschema",
    "matplotlib",
)


def imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def offenders(names: set[str], banned: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == b or n.startswith(b + ".") for b in banned))


def test_version_imports_nothing_heavy() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "secretivex", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == f"secretivex {secretivex.__version__}\n"
    names = imported(proc.stderr)
    assert "secretivex.cli.main" in names  # the parse worked: this is a real import log
    heavy = ("pydantic", "typer", "click", "cryptography", "anyio", "yaml", "secretivex.config",
             *NOT_FOR_THE_AGENT)  # fmt: skip
    assert offenders(names, heavy) == []


def test_a_listening_agent_never_imported_bench_testing_or_other_commands(
    tmp_path: Path,
) -> None:
    sock = tmp_path / "agent.sock"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("SECRETIVEX_CONFIG", None)
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "secretivex", "agent", "--socket", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None, "agent exited before listening"
            assert time.monotonic() < deadline, "agent did not listen within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    names = imported(stderr)
    assert "secretivex.agent.server" in names and "secretivex.keys.signing" in names
    assert offenders(names, NOT_FOR_THE_AGENT) == []
    # The plain start skips typer's parser, which builds pydantic adapters per option.
    assert "typer._adapters" not in names


CLIENT_LIST = [sys.executable, "-X", "importtime", "-m", "secretivex", "client", "list"]
CLIENT_LIST += ["--socket", "/nonexistent/agent.sock"]


def test_client_commands_never_import_the_bench_or_testing() -> None:
    proc = subprocess.run(
        CLIENT_LIST,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # no agent there: a one-line error
    names = imported(proc.stderr)
    assert "secretivex.cli.client_cmd" in names
    assert offenders(names, ("secretivex.bench", "secretivex.testing", "secretivex.cli.bench_cmd",
                             "matplotlib", "jsonschema")) == []  # fmt: skip


def test_the_agent_fast_path_takes_plain_starts_and_leaves_the_rest_to_typer() -> None:
    from secretivex.cli.main import _parse_agent_fast

    plain = _parse_agent_fast(["--socket", "/s", "--key", "k1", "--key=k2", "-D", "-t", "1h"])
    assert plain == {
        "config": [],
        "key": [Path("k1"), Path("k2")],
        "socket": Path("/s"),
        "foreground": True,
        "lifetime": "1h",
    }
    for argv in (["--daemon"], ["--help"], ["-Dd"], ["--socket"], ["--socket", "--key"],
                 ["suggest-queue-wait"], ["--kill"], ["-a", "/x", "-a", "/y"],
                 ["--print-env=yes"]):  # fmt: skip
        assert _parse_agent_fast(argv) is None, argv
