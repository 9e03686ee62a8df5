"""`secretivex agent` itself, without typer: what runs once the options are parsed.

Start-up is on the user's path (socket activation starts the agent on the first
``ssh``), so this module imports no CLI framework and the agent process never imports
pydantic: the config is validated in a forked child (``secretivex.config.isolated``)
while this process imports the agent, and comes back as frozen ``RuntimeSettings``.
``secretivex.cli.main`` calls ``run`` directly for plain starts; the typer command in
``agent_cmd`` calls it for everything else (``--daemon``, ``--kill``, ``--help``).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

    from secretivex.config.errors import ConfigProblem
    from secretivex.config.isolated import AgentConfigRequest, PendingLoad
    from secretivex.config.runtime import RuntimeSettings

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class Exit(Exception):
    """Leave ``run`` with this exit code (the message, if any, was printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """The command line of ``secretivex agent`` (see ``agent_cmd`` for the help)."""

    config: list[Path] = field(default_factory=list)
    socket: Path | None = None
    key: list[Path] = field(default_factory=list)
    daemon: bool = False
    foreground: bool = False
    debug: bool = False
    kill: bool = False
    csh: bool = False
    sh: bool = False
    lifetime: str | None = None
    log_file: Path | None = None
    print_env: bool = False


def _say(message: str) -> None:
    """An error, usage or ``warning: ...`` line on stderr; when stderr is the journal,
    at the error or warning priority."""
    from secretivex.agent.logs import stderr_is_journal

    prefix = ""
    if stderr_is_journal():
        prefix = "<4>" if message.startswith("warning:") else "<3>"
    lines = f"secretivex: {message}".split("\n")
    sys.stderr.write("".join(f"{prefix}{line}\n" for line in lines))
    sys.stderr.flush()


def _usage(message: str) -> Exit:
    _say(message)
    return Exit(EXIT_USAGE)


def run(options: AgentOptions) -> int:
    """Run the agent (or --kill one); returns the exit code."""
    # Start-up allocates a great many long-lived objects (modules, classes) and no
    # garbage: collecting during it only costs time. ``_settle`` turns collection back
    # on once the agent listens.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _run(options)
    except Exit as exc:
        return exc.code
    finally:
        if collecting:  # left before listening (an error, --kill): as it was
            gc.enable()
    return 0


def _run(o: AgentOptions) -> None:
    if o.csh and o.sh:
        raise _usage("-c/--csh and -s/--sh exclude each other")
    if o.kill:
        if o.daemon or o.print_env or o.debug or o.foreground or o.lifetime or o.config or o.key:
            raise _usage("--kill takes only --socket, -c and -s")
        _kill(o.socket, o.csh, o.sh)
        return
    if o.daemon and (o.foreground or o.debug):
        raise _usage(
            "--daemon forks; -D/--foreground and -d/--debug keep the agent in the foreground"
        )
    if o.daemon and o.print_env:
        raise _usage("--print-env is for foreground starts: --daemon prints the environment")
    if o.log_file is not None and not o.daemon:
        raise _usage("--log-file is for --daemon (in the foreground the log goes to stderr)")
    from secretivex.agent.hardening import harden_process, log_problems

    # Before anything reads a key, PIN or passphrase: no ptrace/proc-mem, no core file.
    # (The config loader and a --daemon child inherit both across fork.)
    hardening_problems = harden_process()
    from secretivex.config.isolated import AgentConfigRequest, start_load
    from secretivex.config.lifetime import parse_lifetime

    default_lifetime_s = None
    if o.lifetime is not None:
        try:
            default_lifetime_s = parse_lifetime(o.lifetime)
        except ValueError as exc:
            raise _usage(f"-t: {exc}") from None
    request = AgentConfigRequest(
        config_files=tuple(c.expanduser().absolute() for c in o.config),
        socket=None if o.socket is None else o.socket.expanduser().absolute(),
        keys=tuple(k.expanduser().absolute() for k in o.key),
        default_lifetime_s=default_lifetime_s,
    )
    _import_shared()
    pending = start_load(request)
    # While the child validates the config: everything the running agent needs.
    _import_the_agent()
    settings, warnings = _settings(pending)
    reload = _reloader(request)
    level = "debug" if o.debug else settings.logging.level
    from secretivex.agent.logs import setup_logging

    if o.daemon:
        from secretivex.cli import daemon as daemon_mod

        # The daemon's log may go nowhere: say it here, where the user is looking.
        for warning in warnings:
            _say(f"warning: config: {warning}")
        logs = o.log_file.expanduser().absolute() if o.log_file is not None else None

        def serve(on_listening: Any) -> None:
            setup_logging(level, settings.logging.format)
            log_problems(hardening_problems)
            _serve(settings, reload, on_listening, inherited={})

        try:
            pid, path = daemon_mod.spawn(serve, log_file=logs)
        except daemon_mod.DaemonError as exc:
            _say(str(exc))
            raise Exit(exc.exit_code) from None  # 2 for an unusable --log-file
        sys.stdout.write(daemon_mod.env_lines(path, pid, csh=daemon_mod.use_csh(o.csh, o.sh)))
        sys.stdout.flush()
        return
    setup_logging(level, settings.logging.format)
    log_problems(hardening_problems)
    for warning in warnings:
        _log().warning("config: %s", warning)
    _serve_foreground(settings, reload, _print_env if o.print_env else None)


#: Modules both the config loader child and the agent import before it listens:
#: imported once, before the fork, rather than twice after it (on a busy host the two
#: share one core). Not orjson's datetime, uuid and platform: the agent imports orjson
#: on its first metrics snapshot, audit record or JSON log line, after it listens.
SHARED_MODULES = (
    "random",
    "selectors",
    "socket",
    "typing_extensions",
    "secretivex.config.profiles",
    "secretivex.defaults",
)


def _import_shared() -> None:
    import importlib

    for name in SHARED_MODULES:
        importlib.import_module(name)


def _import_the_agent() -> None:
    """Import what serving needs while the config loader runs in its child."""
    import importlib

    import anyio

    from secretivex.agent.lazy_bcrypt import defer_import

    defer_import()  # before cryptography's OpenSSH key support imports bcrypt
    import secretivex.agent.logs
    import secretivex.agent.server
    import secretivex.agent.systemd
    import secretivex.config.profiles
    import secretivex.stores.file  # noqa: F401 - the default store; built by the server

    # anyio imports its event loop backend in ``anyio.run`` (sockets, streams and
    # signals with it), which is after the settings arrive: import it now, meanwhile.
    importlib.import_module("anyio._backends._asyncio")
    _ = anyio.open_signal_receiver
    _backend_options()


def _log() -> logging.Logger:
    import logging

    return logging.getLogger("secretivex")


def _settings(pending: PendingLoad) -> tuple[RuntimeSettings, tuple[ConfigProblem, ...]]:
    """The loaded settings and warnings; a config error is printed (exit 2)."""
    from secretivex.config.errors import ConfigError
    from secretivex.config.isolated import ConfigLoaderError

    try:
        return pending.result()
    except ConfigError as exc:
        for warning in exc.warnings:
            _say(f"warning: config: {warning}")
        for problem in exc.problems:
            _say(f"config: {problem}")
        raise Exit(EXIT_USAGE) from None
    except ConfigLoaderError as exc:
        _say(str(exc))
        raise Exit(EXIT_RUNTIME) from None


def _reloader(request: AgentConfigRequest) -> Callable[[], RuntimeSettings]:
    """SIGHUP: the same request, loaded again in a new process."""

    def reload() -> RuntimeSettings:
        from secretivex.config.isolated import load_in_subprocess

        settings, warnings = load_in_subprocess(request)
        for warning in warnings:
            _log().warning("config: %s", warning)
        return settings

    return reload


def _print_env(path: Path) -> None:
    sys.stdout.write(f"SSH_AUTH_SOCK={path}; export SSH_AUTH_SOCK;\n")
    sys.stdout.flush()


def _serve_foreground(
    settings: RuntimeSettings,
    reload: Callable[[], RuntimeSettings],
    on_listening: Callable[[Path], None] | None,
) -> None:
    from secretivex.agent.audit import AuditPathError
    from secretivex.agent.server import MAIN_LISTENER, AgentStartupError
    from secretivex.agent.systemd import SystemdError, listen_fds

    inherited: dict[str, Any] = {}
    try:
        for item in listen_fds():
            inherited[MAIN_LISTENER if item.is_main else str(item.name)] = item.socket
    except SystemdError as exc:
        _say(str(exc))
        raise Exit(EXIT_RUNTIME) from None
    try:
        _serve(settings, reload, on_listening, inherited)
    except AgentStartupError as exc:
        _say(str(exc))
        raise Exit(EXIT_RUNTIME) from None
    except AuditPathError as exc:
        _say(f"config: {exc}")
        raise Exit(EXIT_USAGE) from None
    except BaseExceptionGroup as group:
        # A startup error raised inside a task group (e.g. by a reload) arrives wrapped.
        startup = _startup_error(group, AgentStartupError)
        if startup is None:
            raise
        _say(str(startup))
        raise Exit(EXIT_RUNTIME) from None
    except KeyboardInterrupt:
        pass


def _serve(
    settings: RuntimeSettings,
    reload: Callable[[], RuntimeSettings],
    on_listening: Callable[[Path], None] | None,
    inherited: dict[str, Any],
) -> None:
    import anyio

    from secretivex.agent.server import Agent

    def listening(path: Path) -> None:
        _settle()
        if on_listening is not None:
            on_listening(path)

    server = Agent(settings, reload_settings=reload, on_listening=listening, inherited=inherited)
    anyio.run(server.run, backend_options=_backend_options())


def _settle() -> None:
    """Once listening: collect what start-up left, move the survivors (modules, classes,
    settings: they live as long as the process) out of the collector's way, collect
    automatically again from here on, and give freed heap pages back to the OS."""
    from secretivex.agent.heap import trim_heap

    gc.collect()
    gc.freeze()
    gc.enable()
    trim_heap()


def _kill(socket: Path | None, csh: bool, sh: bool) -> None:
    from secretivex.cli import daemon as daemon_mod

    path = socket.expanduser().absolute() if socket is not None else None
    try:
        target = daemon_mod.find_agent(os.environ.get("SSH_AGENT_PID"), path)
        daemon_mod.kill_agent(target)
    except daemon_mod.DaemonError as exc:
        _say(str(exc))
        raise Exit(EXIT_RUNTIME) from None
    sys.stdout.write(daemon_mod.kill_lines(target.pid, csh=daemon_mod.use_csh(csh, sh)))
    sys.stdout.flush()


def _startup_error(group: BaseExceptionGroup, kind: type[Exception]) -> Exception | None:
    """The first ``kind`` error in a (nested) group of nothing but ``kind`` errors."""
    matched, rest = group.split(kind)
    if matched is None or rest is not None:
        return None
    exc: BaseException = matched
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc if isinstance(exc, kind) else None


def _backend_options() -> dict[str, Any]:
    """uvloop when installed and not disabled (SECRETIVEX_UVLOOP=0)."""
    if os.environ.get("SECRETIVEX_UVLOOP", "1") == "0":
        return {}
    try:
        import uvloop
    except ImportError:
        return {}
    return {"loop_factory": uvloop.new_event_loop}
