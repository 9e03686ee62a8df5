"""`secretivex agent`: run the agent in the foreground."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import anyio
import typer

log = logging.getLogger("secretivex")

agent_app = typer.Typer(
    help=(
        "Run the SSH agent: in the foreground by default (logs to stderr), or in the "
        "background with --daemon.\n\n"
        "With no configuration it listens on $XDG_RUNTIME_DIR/secretivex/agent.sock "
        "(or ~/.secretivex/agent.sock), serves the private keys in ~/.ssh and accepts "
        "keys from ssh-add. Point clients at it with "
        'eval "$(secretivex agent --daemon)", which forks once the socket listens and '
        'exports SSH_AUTH_SOCK and SSH_AGENT_PID; eval "$(secretivex agent --kill)" stops it '
        "(as ssh-agent and ssh-agent -k).\n\n"
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
    config_files: list[Path],
    socket: Path | None,
    keys: list[Path],
    extra_overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any, list[Any]]:
    """Load the layered config plus CLI flags; returns (config, reload function, the
    first load's warnings for the caller to log once logging is set up)."""
    from secretivex.config import FileStore, LoadRequest

    overrides: dict[str, Any] = dict(extra_overrides or {})
    flags: dict[str, str] = {key: "-t" for key in overrides}
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

    def build(loaded: Any) -> Any:
        cfg = loaded.config
        if cli_store is not None:
            cfg = cfg.model_copy(update={"stores": [*cfg.stores, cli_store]})
        return cfg

    def reload() -> Any:
        loaded = request.load()
        for warning in loaded.warnings:
            log.warning("config: %s", warning)
        return build(loaded)

    first = request.load()
    return build(first), reload, list(first.warnings)


@agent_app.callback()
def agent(
    ctx: typer.Context,
    config: list[Path] = typer.Option(
        [],
        "--config",
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
        metavar="PATH",
        help="Serve this private key file or directory too (repeatable; added as a file store "
        "named 'cli').",
    ),
    daemon: bool = typer.Option(
        False,
        "--daemon",
        help="Fork into the background once the socket listens and print the shell lines "
        'that export SSH_AUTH_SOCK and SSH_AGENT_PID, for eval "$(secretivex agent --daemon)".',
    ),
    foreground: bool = typer.Option(
        False, "--foreground", "-D", help="Stay in the foreground (the default; as ssh-agent -D)."
    ),
    debug: bool = typer.Option(
        False, "--debug", "-d", help="Debug logging to stderr, in the foreground (as ssh-agent -d)."
    ),
    kill: bool = typer.Option(
        False,
        "--kill",
        "-k",
        help="Stop the agent named by SSH_AGENT_PID (or listening on --socket), wait for it to "
        "exit and remove its socket; prints the lines that unset the variables (ssh-agent -k).",
    ),
    csh: bool = typer.Option(False, "--csh", "-c", help="Print C-shell commands (setenv)."),
    sh: bool = typer.Option(False, "--sh", "-s", help="Print Bourne-shell commands."),
    lifetime: str | None = typer.Option(
        None,
        "--lifetime",
        "-t",
        metavar="LIFE",
        help="Default lifetime of keys added by ssh-add without -t: seconds or 1h30m "
        "(overrides agent.default_lifetime; as ssh-agent -t).",
    ),
    log_file: Path | None = typer.Option(
        None,
        "--log-file",
        metavar="FILE",
        help="With --daemon: append the agent's log here (default: discarded).",
    ),
    print_env: bool = typer.Option(
        False,
        "--print-env",
        help="Foreground only: print 'SSH_AUTH_SOCK=...; export SSH_AUTH_SOCK;' on stdout once "
        "listening, then keep serving (for wrappers reading the agent's output; "
        "to eval in a shell use --daemon).",
    ),
) -> None:
    """Run the agent (see `secretivex agent --help`)."""
    if ctx.invoked_subcommand is not None:
        return
    from secretivex.cli import daemon as daemon_mod

    shell_csh = daemon_mod.use_csh(csh, sh)
    if csh and sh:
        _usage("-c/--csh and -s/--sh exclude each other")
    if kill:
        if daemon or print_env or debug or foreground or lifetime or config or key:
            _usage("--kill takes only --socket, -c and -s")
        _kill(socket, shell_csh)
        return
    if daemon and (foreground or debug):
        _usage("--daemon forks; -D/--foreground and -d/--debug keep the agent in the foreground")
    if log_file is not None and not daemon:
        _usage("--log-file is for --daemon (in the foreground the log goes to stderr)")
    from secretivex.agent.hardening import harden_process, log_problems

    # Before anything reads a key, PIN or passphrase: no ptrace/proc-mem, no core file.
    # (A --daemon child inherits both across fork.)
    hardening_problems = harden_process()
    from secretivex.agent.logs import setup_logging
    from secretivex.config import ConfigError
    from secretivex.config.lifetime import parse_lifetime

    overrides: dict[str, Any] = {}
    if lifetime is not None:
        try:
            overrides["agent.default_lifetime"] = parse_lifetime(lifetime)
        except ValueError as exc:
            _usage(f"-t: {exc}")
    try:
        cfg, reload, warnings = load_agent_config(
            [c.expanduser().absolute() for c in config], socket, key, overrides
        )
    except ConfigError as exc:
        for warning in exc.warnings:
            typer.echo(f"secretivex: warning: config: {warning}", err=True)
        for problem in exc.problems:
            typer.echo(f"secretivex: config: {problem}", err=True)
        raise typer.Exit(2) from None
    level = "debug" if debug else cfg.logging.level
    if daemon:
        # The daemon's log may go nowhere: say it here, where the user is looking.
        for warning in warnings:
            typer.echo(f"secretivex: warning: config: {warning}", err=True)
        logs = log_file.expanduser().absolute() if log_file is not None else None

        def serve(on_listening: Any) -> None:
            setup_logging(level, cfg.logging.format)
            log_problems(hardening_problems)
            _serve(cfg, reload, on_listening, inherited={})

        try:
            pid, path = daemon_mod.spawn(serve, log_file=logs)
        except daemon_mod.DaemonError as exc:
            typer.echo(f"secretivex: {exc}", err=True)
            raise typer.Exit(1) from None
        sys.stdout.write(daemon_mod.env_lines(path, pid, csh=shell_csh))
        sys.stdout.flush()
        return
    setup_logging(level, cfg.logging.format)
    log_problems(hardening_problems)
    for warning in warnings:
        log.warning("config: %s", warning)
    from secretivex.agent.audit import AuditPathError
    from secretivex.agent.server import MAIN_LISTENER, AgentStartupError
    from secretivex.agent.systemd import SystemdError, listen_fds

    inherited: dict[str, Any] = {}
    try:
        for item in listen_fds():
            inherited[MAIN_LISTENER if item.is_main else str(item.name)] = item.socket
    except SystemdError as exc:
        typer.echo(f"secretivex: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        _serve(cfg, reload, _print_env if print_env else None, inherited)
    except AgentStartupError as exc:
        typer.echo(f"secretivex: {exc}", err=True)
        raise typer.Exit(1) from None
    except AuditPathError as exc:
        typer.echo(f"secretivex: config: {exc}", err=True)
        raise typer.Exit(2) from None
    except BaseExceptionGroup as group:
        # A startup error raised inside a task group (e.g. by a reload) arrives wrapped.
        startup = _startup_error(group, AgentStartupError)
        if startup is None:
            raise
        typer.echo(f"secretivex: {startup}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def _serve(cfg: Any, reload: Any, on_listening: Any, inherited: dict[str, Any]) -> None:
    from secretivex.agent.server import Agent
    from secretivex.config.runtime import RuntimeSettings

    server = Agent(
        RuntimeSettings.from_config(cfg),
        reload_settings=lambda: RuntimeSettings.from_config(reload()),
        on_listening=on_listening,
        inherited=inherited,
    )
    anyio.run(server.run, backend_options=_backend_options())


def _kill(socket: Path | None, csh: bool) -> None:
    from secretivex.cli import daemon as daemon_mod

    path = socket.expanduser().absolute() if socket is not None else None
    try:
        pid, sock = daemon_mod.find_agent(os.environ.get("SSH_AGENT_PID"), path)
        daemon_mod.kill_agent(pid, sock)
    except daemon_mod.DaemonError as exc:
        typer.echo(f"secretivex: {exc}", err=True)
        raise typer.Exit(1) from None
    sys.stdout.write(daemon_mod.kill_lines(pid, csh=csh))
    sys.stdout.flush()


def _usage(message: str) -> NoReturn:
    typer.echo(f"secretivex: {message}", err=True)
    raise typer.Exit(2)


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
