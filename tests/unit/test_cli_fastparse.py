"""`secretivex client list|health|wait-ready` without typer's parser: same answers, fewer
imports. Every line the fast path runs is compared with typer running the same line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import typer
from harness import keygen, running_agent

from secretivex.cli import client_cmd
from secretivex.cli.fastparse import parse_plain, plain_options

SECRETIVEX = str(Path(sys.executable).with_name("secretivex"))

#: Runs a client command line through typer, as ``main()`` did before the fast path.
_THROUGH_TYPER = (
    "import sys\n"
    "from secretivex.cli.main import build_app\n"
    "build_app('client')(['client', *sys.argv[1:]], prog_name='secretivex')\n"
)

#: Runs ``main()`` and reports (on stderr's last line) whether pydantic was imported.
_REPORT_IMPORTS = (
    "import sys\n"
    "sys.argv = ['secretivex', *sys.argv[1:]]\n"
    "from secretivex.cli.main import main\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    heavy = sorted(m for m in ('pydantic', 'typer._adapters', 'anyio') if m in sys.modules)\n"
    "    print('imported:', ','.join(heavy), file=sys.stderr)\n"
)


def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


# -- what takes the fast path ---------------------------------------------------------


def test_plain_client_commands_are_recognised() -> None:
    commands = {c.name: c.callback for c in client_cmd.app.registered_commands}
    tables = {name: plain_options(cb) for name, cb in commands.items() if cb is not None}
    assert tables["list"] is not None and tables["health"] is not None
    assert tables["wait-ready"] is not None
    # Path options and a required option: typer parses those.
    assert tables["sign"] is None and tables["metrics"] is None
    health = tables["health"]
    assert health is not None
    # An explicitly named bool is only that flag; an unnamed one gets --no-NAME, as typer.
    assert "--json" in health and "--no-json" not in health
    assert health["--no-strict"].value is False and health["--strict"].value is True


def test_options_typer_must_handle_are_not_plain() -> None:
    def with_callback(
        x: Annotated[str, typer.Option("--x", callback=lambda v: v)] = "",
    ) -> None: ...

    def with_envvar(x: Annotated[str, typer.Option("--x", envvar="X")] = "") -> None: ...

    def with_bounds(x: Annotated[int, typer.Option("--x", min=1)] = 1) -> None: ...

    def with_argument(x: Annotated[str, typer.Argument()] = "") -> None: ...

    def with_path(x: Annotated[Path | None, typer.Option("--x")] = None) -> None: ...

    def required(x: Annotated[str, typer.Option("--x")]) -> None: ...

    def with_pair(x: Annotated[bool, typer.Option("--x/--not-x")] = False) -> None: ...

    for func in (
        with_callback, with_envvar, with_bounds, with_argument, with_path, required, with_pair
    ):  # fmt: skip
        assert plain_options(func) is None, func.__name__


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {}),
        (["--json"], {"json_out": True}),
        (["-s", "/x.sock", "--timeout-ms=250"], {"socket": "/x.sock", "timeout_ms": 250}),
        (["--filter", "comment:ci-*"], {"filter_": "comment:ci-*"}),
        (["--timeout-ms", "-5"], None),  # a value that looks like an option
        (["--timeout-ms", "1_000"], None),  # int forms beyond plain digits
        (["--timeout-ms", "+5"], None),
        (["--timeout-ms", " 5"], None),
        (["--timeout-ms", "٣"], None),  # a non-ASCII digit
        (["--timeout-ms"], None),  # a missing value
        (["--json=1"], None),
        (["--json", "--json"], None),  # repeated
        (["-s", "a", "--socket", "b"], None),
        (["--help"], None),
        (["-h"], None),
        (["extra"], None),
        (["--jso"], None),  # no abbreviations
        (["--"], None),
    ],
)
def test_parse_plain(argv: list[str], expected: dict[str, object] | None) -> None:
    table = plain_options(client_cmd.list_cmd)
    assert table is not None
    assert parse_plain(table, argv) == expected


# -- the same answers as typer, with a real agent ---------------------------------------


@pytest.fixture(scope="module")
def agent_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("fastparse")
    key = keygen(tmp, "id_ed25519", comment="fast-path")
    with running_agent(tmp, "--key", str(key)) as agent:
        env = {**agent.env, "COLUMNS": "80", "NO_COLOR": "1"}
        yield env


LINES = [
    ["list"],
    ["list", "--json"],
    ["list", "--filter", "comment:fast-*"],
    ["list", "-f", "comment:nothing-matches"],
    ["list", "-f", "bogus:x"],  # a usage error from the command itself
    ["list", "--timeout-ms=2000"],
    ["list", "--socket", "/nonexistent/agent.sock"],  # a runtime error
    ["health"],
    ["health", "--json"],
    ["health", "--strict"],
    ["health", "--no-strict", "--timeout-ms", "3000"],
    ["wait-ready", "-q"],
    ["wait-ready", "--timeout-ms", "500", "--interval-ms", "10", "-s", "/nonexistent.sock"],
]


@pytest.mark.parametrize("line", LINES, ids=[" ".join(line) for line in LINES])
def test_fast_path_answers_as_typer_does(agent_env: dict[str, str], line: list[str]) -> None:
    fast = _run([sys.executable, "-c", _REPORT_IMPORTS, "client", *line], agent_env)
    slow = _run([sys.executable, "-c", _THROUGH_TYPER, *line], agent_env)
    code, out, err = fast
    *err_lines, report = err.rstrip("\n").split("\n")
    assert report == "imported: ", f"the fast path imported {report}"  # no pydantic, no anyio
    fast_err = "\n".join(err_lines) + ("\n" if err_lines else "")
    assert (code, _normalised(out), fast_err) == (slow[0], _normalised(slow[1]), slow[2])


def _normalised(out: str) -> str:
    """``wait-ready`` says how long it waited."""
    if out.startswith("ready: "):
        return out.split(" after ")[0]
    return out


def test_lines_typer_must_parse_still_work(agent_env: dict[str, str]) -> None:
    code, out, err = _run([SECRETIVEX, "client", "list", "--timeout-ms", "abc"], agent_env)
    assert code == 2 and "--timeout-ms" in err
    code, out, _ = _run([SECRETIVEX, "client", "list", "--help"], agent_env)
    assert code == 0 and "--filter" in out
    code, _, err = _run([SECRETIVEX, "client", "list", "--no-json"], agent_env)
    assert code == 2 and "No such option" in err
