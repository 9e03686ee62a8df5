"""`secretivex agent`: run the agent in the foreground."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import typer

log = logging.getLogger("secretivex")

agent_app = typer.Typer(
    help=(
        "Run the SSH agent in the foreground (logs to stderr).\n\n"
        "With no configuration it listens on $XDG_RUNTIME_DIR/secretivex/agent.sock "
        "(or ~/.secretivex/agent.sock), serves the private keys in ~/.ssh and accepts "
        "keys from ssh-add. Point clients at it with "
        "export SSH_AUTH_SOCK=<socket> (--print-env prints that line once listening).\n\n"
        "Signals: TERM/INT drain and exit 0, HUP reloads the configuration (an invalid one "
        "is rejected and the running one kept), USR1 writes a metrics snapshot, USR2 "
        "resets the counters."
    ),
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_env(path: Path) -> None:
    sys.stdout.write(f"SSH_AUTH_SOCK={path}; export SSH_AUTH_SOCK;\n")
    sys.stdout.flush()


def load_agent_config(
    config_files: list[Path], socket: Path | None, keys: list[Path]
) -> tuple[Any, Any]:
    """Load the layered config plus CLI flags; returns (config, reload function)."""
    from secretivex.config import FileStore, LoadRequest

    overrides: dict[str, Any] = {}
    flags: dict[str, str] = {}
    if socket is not None:
        overrides["agent.socket"] = str(socket.expanduser().absolute())
        flags["agent.socket"] = "--socket"
    request = LoadRequest(
        config_files=tuple(config_files), cli_overrides=overrides, cli_flags=flags
    )
    cli_store = (
        FileStore(type="file", name="cli", paths=[k.expanduser().absolute() for k in keys])
        if keys
        else None
    )

    def reload() -> Any:
        cfg = request.load().config
        if cli_store is not None:
            cfg = cfg.model_copy(update={"stores": [*cfg.stores, cli_store]})
        return cfg

    return reload(), reload


@agent_app.callback()
def agent(
    ctx: typer.Context,
    config: list[Path] = typer.Option(
        [],
        "--config",
        "-c",
        metavar="FILE",
        help="Config file layered over the system/user ones (repeatable, later wins). "
        "Default: $SECRETIVEX_CONFIG (colon-separated).",
    ),
    socket: Path | None = typer.Option(
        None, "--socket", "-a", metavar="PATH", help="Main socket path (overrides agent.socket)."
    ),
    key: list[Path] = typer.Option(
        [],
        "--key",
        "-k",
        metavar="PATH",
        help="Serve this private key file or directory too (repeatable; added as a file store "
        "named 'cli').",
    ),
    print_env: bool = typer.Option(
        False,
        "--print-env",
        help="Print 'SSH_AUTH_SOCK=...; export SSH_AUTH_SOCK;' on stdout once listening.",
    ),
) -> None:
    """Run the agent (see `secretivex agent --help`)."""
    if ctx.invoked_subcommand is not None:
        return
    from secretivex.agent.logs import setup_logging
    from secretivex.agent.server import Agent, AgentStartupError
    from secretivex.config import ConfigError

    try:
        cfg, reload = load_agent_config(config, socket, key)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"secretivex: config: {problem}", err=True)
        raise typer.Exit(2) from None
    setup_logging(cfg.logging.level, cfg.logging.format)
    from secretivex.agent.server import MAIN_LISTENER
    from secretivex.agent.systemd import SystemdError, listen_fds

    inherited: dict[str, Any] = {}
    try:
        for item in listen_fds():
            inherited[MAIN_LISTENER if item.is_main else str(item.name)] = item.socket
    except SystemdError as exc:
        typer.echo(f"secretivex: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        server = Agent(
            cfg,
            reload_config=reload,
            on_listening=_print_env if print_env else None,
            inherited=inherited,
        )
        anyio.run(server.run, backend_options=_backend_options())
    except AgentStartupError as exc:
        typer.echo(f"secretivex: {exc}", err=True)
        raise typer.Exit(1) from None
    except BaseExceptionGroup as group:
        # A startup error raised inside a task group (e.g. by a reload) arrives wrapped.
        startup = _startup_error(group, AgentStartupError)
        if startup is None:
            raise
        typer.echo(f"secretivex: {startup}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def _startup_error(group: BaseExceptionGroup, kind: type[Exception]) -> Exception | None:
    """The first ``kind`` error in a (nested) group of nothing but ``kind`` errors."""
    matched, rest = group.split(kind)
    if matched is None or rest is not None:
        return None
    exc: BaseException = matched
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None


@agent_app.command("suggest-queue-wait")
def suggest_queue_wait_cmd(
    profile: str | None = typer.Option(
        None, "--profile", "-p", help="Profile to suggest for (default: agent.profile)."
    ),
    config: list[Path] = typer.Option([], "--config", "-c", metavar="FILE"),
    json_out: bool = typer.Option(False, "--json", help="Print the suggestion as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="key=value lines for scripts."),
) -> None:
    """Print the queue-wait tail guardrail suggested for a profile on this machine
    (use it with `secretivex client metrics --queue-wait-tail-ns/-max-ratio`)."""
    from secretivex.config import ConfigError, LoadRequest
    from secretivex.metrics.guardrails import format_suggestion, suggest_queue_wait

    if json_out and quiet:
        typer.echo("secretivex: --json and --quiet exclude each other", err=True)
        raise typer.Exit(2)
    if profile is None:
        try:
            profile = LoadRequest(config_files=tuple(config)).load().config.agent.profile
        except ConfigError as exc:
            for problem in exc.problems:
                typer.echo(f"secretivex: config: {problem}", err=True)
            raise typer.Exit(2) from None
    try:
        suggestion = suggest_queue_wait(profile)
    except KeyError:
        typer.echo(f"secretivex: unknown profile {profile!r}", err=True)
        raise typer.Exit(2) from None
    typer.echo(format_suggestion(suggestion, "json" if json_out else "quiet" if quiet else "text"))


def _backend_options() -> dict[str, Any]:
    """uvloop when installed and not disabled (SECRETIVEX_UVLOOP=0)."""
    if os.environ.get("SECRETIVEX_UVLOOP", "1") == "0":
        return {}
    try:
        import uvloop
    except ImportError:
        return {}
    return {"loop_factory": uvloop.new_event_loop}


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
