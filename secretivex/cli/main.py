"""The `secretivex` command: one typer app, one sub-app per area."""

from __future__ import annotations

import sys

import typer

from secretivex import __version__
from secretivex.cli import agent_cmd, bench_cmd, client_cmd, config_cmd, units_cmd

app = typer.Typer(
    name="secretivex",
    help=(
        "An SSH agent appliance: serve SSH signing keys from key files, PKCS#11 tokens "
        "and other agents over scoped, policed Unix sockets.\n\n"
        "Exit codes: 0 ok, 1 runtime error, 2 usage/config error, 3 guardrail failed."
    ),
    no_args_is_help=True,
    # --install-completion / --show-completion for bash, zsh, fish, PowerShell.
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"secretivex {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """secretivex: an SSH agent appliance."""


agent_cmd.register(app)
app.add_typer(config_cmd.app, name="config")
app.add_typer(client_cmd.app, name="client")
app.add_typer(bench_cmd.app, name="bench")
units_cmd.register(app)


def main() -> None:
    """Console entry point: usage errors exit 2, never with a traceback."""
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
