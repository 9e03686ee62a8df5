"""The agent's configuration, validated in a short-lived process.

Validating a config needs pydantic, YAML and the config models: about 100 ms to import
and build, and 12-15 MiB that stay in a process once it has. The running agent needs
none of it, only the frozen ``RuntimeSettings`` derived from the result. So:

* at start, ``start_load`` forks a child before the agent imports anything heavy; the
  child runs the ordinary loader (same layers, same checks, same messages) and sends
  the settings and warnings back over a pipe, while the parent imports
  anyio, cryptography and the agent in parallel; ``PendingLoad.result`` collects them;
* on SIGHUP, ``load_in_subprocess`` does the same in a fresh interpreter (the running
  agent has threads, so it does not fork). That interpreter is an ordinary, dumpable
  process of the agent's uid, so it gets only the environment a config load reads
  (``loader_environment``): a PIN variable for a store the new config adds, or any
  other secret the agent was started with, never shows in its ``/proc/PID/environ``.

A config error comes back as the same ``ConfigError`` (problems and warnings), so the
CLI prints exactly what an in-process load would. ``AgentConfigRequest.load`` is that
in-process load; it is used directly when the process already has threads (forking
then is unsafe), e.g. when the CLI runs inside a test process.
"""

from __future__ import annotations

import dataclasses
import marshal
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secretivex.config.errors import ConfigError, ConfigProblem
from secretivex.config.matchers import Matcher

if TYPE_CHECKING:
    from secretivex.config.derive import Make
    from secretivex.config.runtime import RuntimeSettings

__all__ = [
    "AgentConfigRequest",
    "ConfigLoaderError",
    "PendingLoad",
    "load_in_subprocess",
    "start_load",
]

#: How long a reload waits for the loader process.
RELOAD_TIMEOUT_S = 60.0

Loaded = tuple["RuntimeSettings", tuple[ConfigProblem, ...]]


class ConfigLoaderError(Exception):
    """The loader process failed for a reason other than the config (it crashed, was
    killed or timed out); the message says what happened."""


@dataclass(frozen=True, slots=True)
class AgentConfigRequest:
    """What ``secretivex agent`` loads: the layered config plus its command-line flags.

    Paths are taken as given (the CLI makes them absolute first).
    """

    #: ``--config`` files in order (empty: ``SECRETIVEX_CONFIG``, then the defaults).
    config_files: tuple[Path, ...] = ()
    #: ``--socket``: overrides ``agent.socket``.
    socket: Path | None = None
    #: ``--key`` paths: served by one more file store, named ``cli``, listed last.
    keys: tuple[Path, ...] = ()
    #: ``-t``: overrides ``agent.default_lifetime`` (seconds).
    default_lifetime_s: int | None = None

    def load(self) -> Loaded:
        """Load, validate and derive the settings in this process (imports pydantic).
        Returns (settings, warnings); raises ``ConfigError``."""
        from secretivex.config.runtime import RuntimeSettings

        settings, warnings = self.derive(RuntimeSettings.make)
        return settings, warnings

    def derive(self, make: Make) -> tuple[Any, tuple[ConfigProblem, ...]]:
        """Load and validate, then derive the settings with ``make``
        (``secretivex.config.derive``). Returns (settings, warnings); raises
        ``ConfigError``."""
        from secretivex.config.derive import derive
        from secretivex.config.loader import LoadRequest
        from secretivex.config.models import FileStore

        overrides: dict[str, Any] = {}
        flags: dict[str, str] = {}
        if self.default_lifetime_s is not None:
            overrides["agent.default_lifetime"] = self.default_lifetime_s
            flags["agent.default_lifetime"] = "-t"
        if self.socket is not None:
            overrides["agent.socket"] = str(self.socket)
            flags["agent.socket"] = "--socket"
        loaded = LoadRequest(
            config_files=self.config_files, cli_overrides=overrides, cli_flags=flags
        ).load()
        cfg = loaded.config
        if self.keys:
            cli_store = FileStore(type="file", name="cli", paths=list(self.keys))
            cfg = cfg.model_copy(update={"stores": [*cfg.stores, cli_store]})
        return derive(cfg, make), tuple(loaded.warnings)


# -- the wire format -------------------------------------------------------------------
#
# ``marshal`` (built in, always loaded) rather than ``pickle`` (about 350 KiB that the
# agent would keep for nothing): plain values as they are, everything else tagged.
# Only the dataclasses named here are ever rebuilt.


#: The dataclasses that cross the wire as themselves, whatever the process.
_BASE_CLASSES: dict[str, type[Any]] = {
    c.__name__: c for c in (Matcher, ConfigProblem, AgentConfigRequest)
}


def _wire_class(name: str) -> type[Any]:
    """The dataclass called ``name`` that may cross the wire (else ``KeyError``): the
    request, matchers and problems, and the settings classes (``config.runtime``,
    imported only when one is asked for: the loader child sends settings as
    ``_Made`` values)."""
    cls = _BASE_CLASSES.get(name)
    return cls if cls is not None else _settings_classes()[name]


def _settings_classes() -> dict[str, type[Any]]:
    from secretivex.config.runtime import SETTINGS_CLASSES

    return SETTINGS_CLASSES


class _Made:
    """A settings value as the loader child makes it (``derive``'s ``make``): the
    class's name and the fields, sent as such; the agent builds the class."""

    __slots__ = ("fields", "kind")

    def __init__(self, kind: str, /, **fields: Any) -> None:
        self.kind = kind
        self.fields = fields


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bytes):
        return value  # bool is an int
    if isinstance(value, _Made):
        return ("K", value.kind, {k: _encode(v) for k, v in value.fields.items()})
    if isinstance(value, tuple):
        return ("T", *(_encode(v) for v in value))
    if isinstance(value, list):
        return ("L", *(_encode(v) for v in value))
    if isinstance(value, Path):
        return ("P", str(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        try:
            known = _wire_class(name) is type(value)
        except KeyError:
            known = False
        if not known:
            raise TypeError(f"cannot send a {name}")
        return ("D", name, *(_encode(getattr(value, f.name)) for f in dataclasses.fields(value)))
    raise TypeError(f"cannot send a {type(value).__name__}")


def _decode(value: Any) -> Any:
    if not isinstance(value, tuple):
        return value
    tag, *items = value
    if tag == "T":
        return tuple(_decode(v) for v in items)
    if tag == "L":
        return [_decode(v) for v in items]
    if tag == "P":
        return Path(items[0])
    if tag == "K":
        kind, fields = items
        return _settings_classes()[kind](**{k: _decode(v) for k, v in fields.items()})
    if tag == "D":
        cls = _wire_class(items[0])
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**dict(zip(names, (_decode(v) for v in items[1:]), strict=True)))
    raise ValueError(f"unknown tag {tag!r}")


def _dumps(value: Any) -> bytes:
    return marshal.dumps(_encode(value))


def _loads(data: bytes) -> Any:
    return _decode(marshal.loads(data))  # noqa: S302 - our own loader process, private pipe


# -- the loader's side ----------------------------------------------------------------


#: pydantic's plugin loader (``pydantic.plugin._loader``): the module pydantic imports
#: when it builds its first model, only to call ``get_plugins``.
_PLUGIN_LOADER = "pydantic.plugin._loader"


def _as_loader_process() -> None:
    """Settings for a process that only loads the config and exits: no cyclic garbage
    collection (a quarter of the import time of pydantic and the models goes to
    collections that free nothing), no scan for pydantic plugins (it reads every
    installed package's metadata; a config loader has no use for plugins)."""
    import gc

    gc.disable()
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    if os.environ["PYDANTIC_DISABLE_PLUGINS"] in ("__all__", "1", "true"):
        _without_plugin_discovery()


def _without_plugin_discovery() -> None:
    """With plugins disabled, pydantic's ``get_plugins`` returns nothing, but importing
    its module imports ``importlib.metadata`` (zipfile, email, csv...: about 13 ms, a
    tenth of the loader's time). A loader module whose ``get_plugins`` says the same
    at once stands in for it (before pydantic is imported; never in a process that
    already has the real one)."""
    if _PLUGIN_LOADER in sys.modules:
        return
    import types

    stub = types.ModuleType(_PLUGIN_LOADER, "plugins are disabled in the config loader")
    stub.get_plugins = tuple  # type: ignore[attr-defined] # () as the real one does
    sys.modules[_PLUGIN_LOADER] = stub


def _outcome(request: AgentConfigRequest, make: Make = _Made) -> tuple[Any, ...]:
    """What the loader sends back: ("ok", settings, warnings), ("config", problems,
    warnings) or ("crash", traceback text). A loader process sends the settings as
    ``_Made`` values (it never imports ``secretivex.config.runtime``)."""
    try:
        settings, warnings = request.derive(make)
    except ConfigError as exc:
        return ("config", tuple(exc.problems), tuple(exc.warnings))
    except Exception:
        import traceback

        return ("crash", traceback.format_exc())
    return ("ok", settings, warnings)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unpack(outcome: tuple[Any, ...]) -> Loaded:
    kind = outcome[0]
    if kind == "ok":
        from secretivex.config.runtime import RuntimeSettings

        settings, warnings = outcome[1], outcome[2]
        if not isinstance(settings, RuntimeSettings):
            raise ConfigLoaderError("the config loader sent something else than settings")
        return settings, tuple(warnings)
    if kind == "config":
        raise ConfigError(list(outcome[1]), outcome[2])
    raise ConfigLoaderError(f"the config loader failed:\n{outcome[1]}".rstrip())


# -- at start: a forked child ---------------------------------------------------------


class PendingLoad:
    """A load under way in a forked child, or one already done in this process."""

    def __init__(self, pid: int | None, fd: int | None, done: tuple[Any, ...] | None) -> None:
        self._pid = pid
        self._fd = fd
        self._done = done

    def result(self) -> Loaded:
        """Wait for the child; returns (settings, warnings) or raises ``ConfigError``
        (or ``ConfigLoaderError`` when the child died)."""
        if self._done is None:
            self._done = self._collect()
        return _unpack(self._done)

    def _collect(self) -> tuple[Any, ...]:
        assert self._pid is not None and self._fd is not None
        chunks: list[bytes] = []
        try:
            while chunk := os.read(self._fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(self._fd)
            _, status = os.waitpid(self._pid, 0)
        data = b"".join(chunks)
        if not data:
            code = os.waitstatus_to_exitcode(status)
            raise ConfigLoaderError(f"the config loader exited with status {code}")
        outcome: tuple[Any, ...] = _loads(data)
        return outcome


def start_load(request: AgentConfigRequest) -> PendingLoad:
    """Start loading ``request`` in a forked child and return at once; call
    ``result()`` on the answer when the settings are needed.

    Loads in this process instead when it already runs other threads (a fork would
    copy their locks in whatever state they are)."""
    threading = sys.modules.get("threading")
    if (threading is not None and threading.active_count() > 1) or not hasattr(os, "fork"):
        from secretivex.config.runtime import RuntimeSettings

        return PendingLoad(None, None, _outcome(request, RuntimeSettings.make))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child; the tests observe the answer
        status = 0
        try:
            os.close(read_fd)
            _as_loader_process()
            _write_all(write_fd, _dumps(_outcome(request)))
        except BaseException:
            status = 70
        finally:
            os._exit(status)
    os.close(write_fd)
    return PendingLoad(pid, read_fd, None)


# -- on reload: a fresh interpreter ---------------------------------------------------

#: The loader process: this process's sys.path and the request on stdin.
_BOOT = (
    "import marshal, sys\n"
    "path, request = marshal.load(sys.stdin.buffer)\n"
    "sys.path[:] = path\n"
    "from secretivex.config.isolated import serve\n"
    "serve(request)\n"
)


def serve(request: Any) -> None:
    """The loader process's main: the (encoded) request from ``_BOOT``, the outcome on
    stdout. Anything else that writes to stdout lands on stderr instead."""
    _as_loader_process()
    out = os.dup(1)
    os.dup2(2, 1)
    _write_all(out, _dumps(_outcome(_decode(request))))
    os.close(out)


#: The config sections (``loader.SECTIONS``; not imported: the agent never loads the
#: models), for ``SECRETIVEX_<SECTION>...`` variables.
_SECTIONS = ("agent", "stores", "policy", "listeners", "metrics", "audit", "logging")
#: Variables a config load reads (paths, defaults, locale) or the interpreter uses.
_LOADER_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"}
    | {"XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "SECRETIVEX_CONFIG"}
)
_LOADER_PREFIXES = ("LC_", "PYTHON", "PYDANTIC_", "COVERAGE")


def loader_environment(env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """What the reload's loader process inherits: the variables a config load reads, and
    of the ``SECRETIVEX_*`` ones only those that set (or would be warned about as
    misspelt) config keys. A PIN in ``SECRETIVEX_PKCS11_PIN`` stays behind."""
    out = {}
    for name, value in env.items():
        if name in _LOADER_NAMES or name.startswith(_LOADER_PREFIXES):
            out[name] = value
        elif name.startswith("SECRETIVEX_"):
            rest = name[len("SECRETIVEX_") :].lower()
            if "__" in rest or rest.split("_", 1)[0] in _SECTIONS:
                out[name] = value
    return out


def load_in_subprocess(request: AgentConfigRequest, timeout_s: float = RELOAD_TIMEOUT_S) -> Loaded:
    """Load ``request`` in a new Python process (same interpreter, same ``sys.path`` and
    working directory, the environment ``loader_environment`` keeps); returns (settings,
    warnings) or raises ``ConfigError`` / ``ConfigLoaderError``."""
    import subprocess

    payload = marshal.dumps((list(sys.path), _encode(request)))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _BOOT],
            input=payload,
            stdout=subprocess.PIPE,
            timeout=timeout_s,
            check=False,
            env=loader_environment(os.environ),
        )
    except subprocess.TimeoutExpired:
        raise ConfigLoaderError(
            f"the config loader did not finish within {timeout_s:g} s"
        ) from None
    except OSError as exc:
        raise ConfigLoaderError(f"cannot start the config loader: {exc}") from None
    if proc.returncode != 0 or not proc.stdout:
        raise ConfigLoaderError(f"the config loader exited with status {proc.returncode}")
    outcome: tuple[Any, ...] = _loads(proc.stdout)
    return _unpack(outcome)
