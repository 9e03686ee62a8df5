"""The `secretivex` command: one typer app, one sub-app per area, imported on demand.

Start-up is on the user's path (socket activation starts the agent on the first
``ssh``; every ``secretivex client ...`` pays the CLI's imports), so ``main`` builds
only the sub-app the command line names: ``secretivex agent`` never imports the bench,
the client commands or the config UX, and ``secretivex --version`` imports nothing
but this module. ``app`` (every sub-app, for help, completion and tests) is built on
first access.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

__all__ = ["build_app", "main"]  # and ``app``, built on first access

HELP = (
    "An SSH agent appliance: serve SSH signing keys from key files, PKCS#11 tokens "
    "and other agents over scoped, policed Unix sockets.\n\n"
    "Exit codes: 0 ok, 1 runtime error, 2 usage/config error, 3 guardrail failed."
)


def _register_agent(app: typer.Typer) -> None:
    from secretivex.cli import agent_cmd

    agent_cmd.register(app)


def _register_config(app: typer.Typer) -> None:
    from secretivex.cli import config_cmd

    app.add_typer(config_cmd.app, name="config")


def _register_client(app: typer.Typer) -> None:
    from secretivex.cli import client_cmd

    app.add_typer(client_cmd.app, name="client")


def _register_bench(app: typer.Typer) -> None:
    from secretivex.cli import bench_cmd

    app.add_typer(bench_cmd.app, name="bench")


def _register_units(app: typer.Typer) -> None:
    from secretivex.cli import units_cmd

    units_cmd.register(app)


#: Sub-command name -> how to register it, in help order.
SUBCOMMANDS: dict[str, Callable[[typer.Typer], None]] = {
    "agent": _register_agent,
    "config": _register_config,
    "client": _register_client,
    "bench": _register_bench,
    "install-units": _register_units,
}


def _version() -> str:
    from secretivex import __version__

    return f"secretivex {__version__}"


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app with every sub-app, or only ``only`` (a name in ``SUBCOMMANDS``)."""
    import typer

    app = typer.Typer(
        name="secretivex",
        help=HELP,
        no_args_is_help=True,
        # --install-completion / --show-completion for bash, zsh, fish, PowerShell.
        add_completion=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    def version_callback(value: bool) -> None:
        if value:
            typer.echo(_version())
            raise typer.Exit(0)

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False, "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ) -> None:
        """secretivex: an SSH agent appliance."""

    for name, register in SUBCOMMANDS.items():
        if only is None or name == only:
            register(app)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _wanted(argv: list[str]) -> str | None:
    """The sub-command the command line runs, when it names exactly one we know."""
    for arg in argv:
        if arg.startswith("-"):
            return None  # a root option first (--help, completion): build everything
        return arg if arg in SUBCOMMANDS else None
    return None


#: ``secretivex agent`` options the fast path understands: name -> (parameter, takes a
#: value, repeatable). Anything else (--help, a sub-command, an unknown, repeated or
#: combined flag) goes through typer, which owns the full grammar; ``agent_run`` checks
#: the combinations (``--daemon --print-env``...) either way.
_AGENT_FAST_OPTIONS: dict[str, tuple[str, bool, bool]] = {
    "--config": ("config", True, True),
    "--socket": ("socket", True, False),
    "-a": ("socket", True, False),
    "--key": ("key", True, True),
    "--lifetime": ("lifetime", True, False),
    "-t": ("lifetime", True, False),
    "--print-env": ("print_env", False, False),
    "--foreground": ("foreground", False, False),
    "-D": ("foreground", False, False),
    "--debug": ("debug", False, False),
    "-d": ("debug", False, False),
    "--daemon": ("daemon", False, False),
    "--log-file": ("log_file", True, False),
    "--kill": ("kill", False, False),
    "-k": ("kill", False, False),
    "--csh": ("csh", False, False),
    "-c": ("csh", False, False),
    "--sh": ("sh", False, False),
    "-s": ("sh", False, False),
}
#: Options whose value is a path (the others are strings).
_AGENT_PATH_OPTIONS = frozenset({"socket", "log_file"})


def _parse_agent_fast(argv: list[str]) -> dict[str, Any] | None:
    """The agent's options (``AgentOptions`` fields) for a plain command line, or None
    to let typer parse. Importing typer and click, and typer 0.29 building a pydantic
    TypeAdapter per option while parsing, cost more than the rest of the agent's start
    (socket activation, the first ``ssh`` of a session, ``eval "$(secretivex agent
    --daemon)"`` in every shell), so the common forms skip them."""
    from pathlib import Path

    values: dict[str, Any] = {"config": [], "key": []}
    args = iter(argv)
    for arg in args:
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        spec = _AGENT_FAST_OPTIONS.get(name)
        if spec is None:
            return None
        param, takes_value, repeatable = spec
        if not takes_value:
            if eq or param in values:
                return None
            values[param] = True
            continue
        value = inline if eq else next(args, None)
        if value is None or (not eq and value.startswith("-") and value != "-"):
            return None  # a missing value: typer says so properly
        if repeatable:
            values[param].append(Path(value))
        elif param in values:
            return None  # given twice: typer's rules decide
        else:
            values[param] = Path(value) if param in _AGENT_PATH_OPTIONS else value
    return values


def _run_agent_fast(values: dict[str, Any]) -> None:
    """A plain start: straight to the agent, no typer or click imported."""
    from secretivex.cli.agent_run import AgentOptions, run

    code = run(AgentOptions(**values))
    if code:
        sys.exit(code)


def _run_client_plain(argv: list[str]) -> bool:
    """``secretivex client list|health|wait-ready`` with plain options, without typer's
    parser (see ``cli.fastparse``); False when typer must parse the line."""
    from secretivex.cli import client_cmd
    from secretivex.cli.fastparse import run_plain

    return run_plain(client_cmd.app, argv)


def main() -> None:
    """Console entry point: usage errors exit 2, never with a traceback."""
    argv = sys.argv[1:]
    if argv == ["--version"]:
        sys.stdout.write(_version() + "\n")
        return
    if argv[:1] == ["agent"] and (fast := _parse_agent_fast(argv[1:])) is not None:
        _run_agent_fast(fast)
        return
    if argv[:1] == ["client"] and _run_client_plain(argv[1:]):
        return
    try:
        build_app(_wanted(argv))(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
