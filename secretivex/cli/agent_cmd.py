"""`secretivex agent`: the typer command (help, --daemon, --kill, every option form).

Running the agent is ``secretivex.cli.agent_run``, which plain starts reach without
typer (``secretivex.cli.main``).
"""

from __future__ import annotations

from pathlib import Path

import typer

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
    from secretivex.cli.agent_run import AgentOptions, run

    code = run(
        AgentOptions(
            config=config,
            socket=socket,
            key=key,
            daemon=daemon,
            foreground=foreground,
            debug=debug,
            kill=kill,
            csh=csh,
            sh=sh,
            lifetime=lifetime,
            log_file=log_file,
            print_env=print_env,
        )
    )
    if code:
        raise typer.Exit(code)


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


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
