"""The layered loader: every source merged in order, validated, with provenance.

Layers, lowest first (the config contract in DESIGN.md):

1. built-in defaults (``default``)
2. profile defaults for ``agent.profile`` (``profile:NAME``), scaled by CPU count
3. ``/etc/secretivex/config.yaml``
4. ``/etc/secretivex/config.d/*.yaml``, sorted by name
5. ``$XDG_CONFIG_HOME/secretivex/config.yaml`` (``~/.config`` when unset)
6. each ``--config FILE`` in order, or else ``SECRETIVEX_CONFIG`` (colon-separated)
7. ``SECRETIVEX_<SECTION>__<KEY>`` environment variables (values read as YAML)
8. CLI overrides passed by the caller

Mappings merge deeply; lists replace whole. The profile is read from the merged
layers 3-8, then its defaults are slotted in below the files.

Reloading (SIGHUP) is calling ``LoadRequest.load()`` again: it re-reads every
source and returns a new, independent ``LoadedConfig`` or raises ``ConfigError``.
"""

from __future__ import annotations

import os
import re
import shlex
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from secretivex.config.errors import ConfigError, ConfigProblem
from secretivex.config.filechecks import config_file_owner_problem, config_file_write_problem
from secretivex.config.layers import (
    KeyPath,
    Layer,
    LayerReadError,
    Origin,
    format_key_path,
    layer_from_value,
    merge_layers,
    parse_yaml_layer,
)
from secretivex.config.models import (
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    FileStore,
    Pkcs11Store,
    SecretivexConfig,
    UpstreamStore,
    cross_key_problems,
    default_socket_path,
    host_checks,
    with_store_names,
)
from secretivex.config.profiles import (
    DEFAULT_PROFILE,
    PROFILE_NAMES,
    detect_cpu_count,
    profile_defaults,
    profile_source,
)
from secretivex.defaults import STORE_TYPES

__all__ = [
    "CONFIG_FILES_ENV",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "ConfigError",
    "ConfigPaths",
    "ConfigProblem",
    "LoadRequest",
    "LoadedConfig",
    "load_config",
    "redacted_dict",
]

#: Colon-separated config files, used when no ``--config`` is given.
CONFIG_FILES_ENV = ENV_PREFIX + "CONFIG"
SECTIONS: tuple[str, ...] = tuple(SecretivexConfig.model_fields)
_LIST_SECTIONS = frozenset(
    name
    for name, info in SecretivexConfig.model_fields.items()
    if typing.get_origin(info.annotation) is list
)
_STORE_CLASSES: dict[str, type[BaseModel]] = dict(
    zip(STORE_TYPES, (FileStore, Pkcs11Store, UpstreamStore), strict=True)
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ConfigPaths:
    """Where the system and user layers live. ``None`` skips that layer.

    Tests and ``config validate FILE`` use ``ConfigPaths.isolated()``, which reads
    nothing outside the files named explicitly.
    """

    system_file: Path | None = Path("/etc/secretivex/config.yaml")
    system_dir: Path | None = Path("/etc/secretivex/config.d")
    user_file: Path | None = None

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> ConfigPaths:
        environ = os.environ if env is None else env
        return cls(user_file=user_config_file(environ))

    @classmethod
    def isolated(cls) -> ConfigPaths:
        return cls(system_file=None, system_dir=None, user_file=None)


def user_config_file(env: Mapping[str, str]) -> Path | None:
    """``$XDG_CONFIG_HOME/secretivex/config.yaml``; ``XDG_CONFIG_HOME`` defaults to ~/.config."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "secretivex" / "config.yaml"
    home = env.get("HOME", "")
    if home and Path(home).is_absolute():
        return Path(home) / ".config" / "secretivex" / "config.yaml"
    try:
        return Path.home() / ".config" / "secretivex" / "config.yaml"
    except RuntimeError:  # pragma: no cover - no home directory at all
        return None


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated configuration and where each value came from.

    ``sources`` maps dotted key paths (``agent.socket``, ``stores[1].pin_env``) to
    ``file:line``, ``env:NAME``, ``cli:--flag``, ``profile:NAME`` or ``default``.
    ``files`` lists the files read, in layer order.
    """

    config: SecretivexConfig
    sources: dict[str, str]
    files: list[Path]
    profile: str
    cpu_count: int
    #: Probable mistakes that did not stop loading (see ``env_warnings``).
    warnings: tuple[ConfigProblem, ...] = ()

    def source_of(self, key_path: str) -> str:
        """The source of a key, or of its nearest listed parent (``default`` if none)."""
        probe = key_path
        while probe:
            if probe in self.sources:
                return self.sources[probe]
            probe = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", probe)
        return "default"


@dataclass(frozen=True)
class LoadRequest:
    """Everything ``load_config`` needs, kept so the agent can reload (SIGHUP)
    by calling ``load()`` again with the same inputs.

    ``env=None`` and ``paths=None`` are resolved at each load (from ``os.environ``).
    """

    config_files: tuple[Path, ...] = ()
    cli_overrides: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    cli_flags: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    env: Mapping[str, str] | None = None
    paths: ConfigPaths | None = None
    check_paths: bool = True
    cpu_count: int | None = None

    def load(self) -> LoadedConfig:
        return load_config(
            config_files=self.config_files,
            cli_overrides=self.cli_overrides,
            cli_flags=self.cli_flags,
            env=self.env,
            paths=self.paths,
            check_paths=self.check_paths,
            cpu_count=self.cpu_count,
        )


# --------------------------------------------------------------------------- loading


def load_config(
    *,
    config_files: Sequence[Path] = (),
    cli_overrides: Mapping[str, Any] | None = None,
    cli_flags: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    paths: ConfigPaths | None = None,
    check_paths: bool = True,
    cpu_count: int | None = None,
) -> LoadedConfig:
    """Read every layer, merge, validate. Raises ``ConfigError`` listing all problems.

    ``cli_overrides`` maps dotted key paths (``"agent.socket"``) or sections to values;
    ``None`` values are skipped (a flag that was not given). ``cli_flags`` names the
    flag behind a key (``{"agent.socket": "--socket"}``) so sources read
    ``cli:--socket``. ``env`` defaults to ``os.environ``; ``paths`` to the real system
    and XDG locations. ``check_paths=False`` skips checks against this machine
    (module files exist, user/group names resolve).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    where = ConfigPaths.default(environ) if paths is None else paths
    cpus = detect_cpu_count() if cpu_count is None else max(int(cpu_count), 1)
    problems: list[ConfigProblem] = []
    file_warnings: list[ConfigProblem] = []
    files: list[Path] = []
    upper: list[Layer] = []

    def add_file(path: Path, *, required: bool, named_by: str = "") -> None:
        layer = _read_file(
            path,
            required=required,
            named_by=named_by,
            problems=problems,
            warnings=file_warnings if check_paths else None,
        )
        if layer is not None:
            files.append(path)
            upper.append(layer)

    if where.system_file is not None:
        add_file(where.system_file, required=False)
    if where.system_dir is not None:
        for fragment in _fragments(where.system_dir, problems, check_modes=check_paths):
            add_file(fragment, required=True)
    if where.user_file is not None:
        add_file(where.user_file, required=False)
    if config_files:
        for path in config_files:
            add_file(Path(path), required=True)
    else:
        for path in _env_config_files(environ):
            add_file(path, required=True, named_by=CONFIG_FILES_ENV)
    upper.extend(_env_layers(environ, problems))
    upper.extend(_cli_layers(cli_overrides or {}, cli_flags or {}, problems))
    warnings = (*file_warnings, *env_warnings(environ, merge_layers(upper)[0]))
    if problems:
        raise ConfigError(problems, warnings)

    profile = _chosen_profile(upper)
    base = [_defaults_layer(environ), _profile_layer(profile, cpus)]
    layers = base + upper
    merged, origins = merge_layers(layers)
    try:
        with host_checks(check_paths):
            config = SecretivexConfig.model_validate(merged)
    except ValidationError as exc:
        rank = {layer.source: index for index, layer in enumerate(layers)}
        raise ConfigError(_problems_from_validation(exc, merged, origins, rank), warnings) from None
    return LoadedConfig(
        config=config,
        sources=_effective_sources(config, origins),
        files=files,
        profile=profile,
        cpu_count=cpus,
        warnings=warnings,
    )


def _read_file(
    path: Path,
    *,
    required: bool,
    named_by: str,
    problems: list[ConfigProblem],
    warnings: list[ConfigProblem] | None,
) -> Layer | None:
    """One file as a layer. With ``warnings`` (host checks on), a file others can write
    is refused and one another uid owns is warned about (``config.filechecks``); the
    checks look at the opened file, so a rename in between changes nothing."""
    source = str(path)
    try:
        with path.open("rb") as fh:
            if warnings is not None:
                st = os.fstat(fh.fileno())
                unsafe = config_file_write_problem(st, source)
                if unsafe:
                    problems.append(ConfigProblem(source, "", None, None, unsafe))
                    return None
                foreign = config_file_owner_problem(st)
                if foreign:
                    warnings.append(ConfigProblem(source, "", None, None, foreign))
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        if required:
            hint = f" (named by {named_by})" if named_by else ""
            problems.append(ConfigProblem(source, "", None, None, f"file not found{hint}"))
        return None
    except IsADirectoryError:
        problems.append(
            ConfigProblem(source, "", None, None, "is a directory, expected a YAML file")
        )
        return None
    except UnicodeDecodeError as exc:
        problems.append(
            ConfigProblem(
                source, "", None, None, f"not UTF-8 text (bad byte at offset {exc.start})"
            )
        )
        return None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        problems.append(ConfigProblem(source, "", None, None, f"cannot read file: {reason}"))
        return None
    try:
        return parse_yaml_layer(text, source)
    except LayerReadError as exc:
        problems.append(ConfigProblem(source, exc.key_path, exc.line, exc.column, exc.message))
        return None


def _fragments(directory: Path, problems: list[ConfigProblem], *, check_modes: bool) -> list[Path]:
    """``config.d/*.yaml`` sorted by name; dotfiles (editor leftovers) are skipped.
    With ``check_modes``, a directory others can write (add fragments to) is refused."""
    try:
        if check_modes:
            unsafe = config_file_write_problem(directory.stat(), str(directory))
            if unsafe:
                problems.append(ConfigProblem(str(directory), "", None, None, unsafe))
                return []
        entries = sorted(directory.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        problems.append(ConfigProblem(str(directory), "", None, None, "is not a directory"))
        return []
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        problems.append(
            ConfigProblem(str(directory), "", None, None, f"cannot list directory: {reason}")
        )
        return []
    return [p for p in entries if p.suffix == ".yaml" and not p.name.startswith(".")]


def _env_config_files(env: Mapping[str, str]) -> list[Path]:
    value = env.get(CONFIG_FILES_ENV, "")
    return [Path(part) for part in value.split(":") if part]


def _env_layers(env: Mapping[str, str], problems: list[ConfigProblem]) -> list[Layer]:
    """One layer per ``SECRETIVEX_<SECTION>[__<KEY>...]`` variable, shorter paths first.

    Variables whose first part is not a section and that have no ``__`` (such as
    ``SECRETIVEX_CONFIG`` or a PIN variable named by ``pin_env``) are not config keys.
    """
    found: list[tuple[KeyPath, str, str]] = []
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :]
        parts = rest.split(ENV_NESTED_DELIMITER)
        section = parts[0].lower()
        source = f"env:{name}"
        if section not in SECTIONS:
            if len(parts) > 1:
                problems.append(
                    ConfigProblem(
                        source, "", None, None, _unknown_key_message(section, SECTIONS, "section")
                    )
                )
            continue
        path: KeyPath = tuple(part.lower() for part in parts)
        if any(not part for part in path):
            problems.append(
                ConfigProblem(
                    source,
                    "",
                    None,
                    None,
                    f"empty key in the variable name (one {ENV_NESTED_DELIMITER} between keys)",
                )
            )
            continue
        if section in _LIST_SECTIONS and len(path) > 1:
            problems.append(
                ConfigProblem(
                    source,
                    format_key_path(path),
                    None,
                    None,
                    f"{section} is a list and lists are replaced whole: set "
                    f"{ENV_PREFIX}{section.upper()}='[{{...}}, ...]' (YAML flow syntax)",
                )
            )
            continue
        found.append((path, name, value))
    layers = []
    for path, name, value in sorted(found, key=lambda item: (len(item[0]), item[1])):
        try:
            parsed = parse_env_value(value)
        except LayerReadError as exc:
            problems.append(
                ConfigProblem(f"env:{name}", format_key_path(path), None, None, exc.message)
            )
            continue
        layers.append(layer_from_value(path, parsed, Origin(f"env:{name}")))
    return layers


def env_warnings(env: Mapping[str, str], merged: Mapping[str, Any]) -> list[ConfigProblem]:
    """``SECRETIVEX_<SECTION>_<KEY>`` (one underscore) variables, which map to no key.

    Only names that start with a section name are flagged: other ``SECRETIVEX_*``
    variables (``SECRETIVEX_CONFIG``, a PIN named by ``pin_env``) are not config keys.
    Variables the config itself names (``*_env`` values) are never flagged.
    """
    referenced = set(_env_names_referenced(merged))
    warnings = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in referenced or name == CONFIG_FILES_ENV:
            continue
        rest = name[len(ENV_PREFIX) :]
        if ENV_NESTED_DELIMITER in rest or rest.lower() in SECTIONS:
            continue
        section = next((s for s in SECTIONS if rest.lower().startswith(s + "_")), None)
        if section is None:
            continue
        key = rest[len(section) + 1 :].lower()
        allowed = _allowed_keys((section,), {}) if section not in _LIST_SECTIONS else []
        close = _close_matches(key, allowed) if allowed else []
        if close:
            hint = f"did you mean {ENV_PREFIX}{section.upper()}{ENV_NESTED_DELIMITER}" + (
                f"{close[0].upper()}?"
            )
        elif section in _LIST_SECTIONS:
            hint = f"{section} is a list: set {ENV_PREFIX}{section.upper()}='[...]'"
        else:
            hint = (
                f"keys are joined with {ENV_NESTED_DELIMITER}: "
                f"{ENV_PREFIX}{section.upper()}{ENV_NESTED_DELIMITER}<KEY>"
            )
        warnings.append(
            ConfigProblem(f"env:{name}", "", None, None, f"ignored, maps to no config key - {hint}")
        )
    return warnings


def _env_names_referenced(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _env_names_referenced(v, str(k))]
    if isinstance(value, list):
        return [n for v in value for n in _env_names_referenced(v, key)]
    return [value] if key.endswith("_env") and isinstance(value, str) else []


def parse_env_value(text: str) -> Any:
    """Read an environment value as YAML: a scalar (``64``, ``true``, ``null``, text) or a
    flow collection (``[a, b]``, ``{k: v}``). Anything YAML would read as a block list or
    mapping (``-``, ``a: b``) is kept as plain text. Raises ``LayerReadError``."""
    stripped = text.strip()
    try:
        if stripped.startswith(("[", "{")):
            return yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at character {mark.column + 1}" if mark else ""
        raise LayerReadError(
            f"cannot parse value as YAML{at}: {exc.problem or 'invalid syntax'} "
            "(quote it, e.g. 'value')"
        ) from None
    if node is None:
        return None
    if not isinstance(node, yaml.ScalarNode):
        return text
    return yaml.safe_load(text)


def _cli_layers(
    overrides: Mapping[str, Any], flags: Mapping[str, str], problems: list[ConfigProblem]
) -> list[Layer]:
    layers = []
    for key, value in overrides.items():
        if value is None:
            continue
        path: KeyPath = tuple(key.split("."))
        source = f"cli:{flags.get(key, key)}"
        if path[0] not in SECTIONS or any(not part for part in path):
            problems.append(ConfigProblem(source, key, None, None, f"not a config key: {key!r}"))
            continue
        layers.append(layer_from_value(path, value, Origin(source)))
    return layers


def _chosen_profile(layers: list[Layer]) -> str:
    merged, _ = merge_layers(layers)
    agent = merged.get("agent")
    profile = agent.get("profile") if isinstance(agent, dict) else None
    return profile if isinstance(profile, str) and profile in PROFILE_NAMES else DEFAULT_PROFILE


def _defaults_layer(env: Mapping[str, str]) -> Layer:
    data: dict[str, Any] = {
        "agent": {"socket": str(default_socket_path(dict(env)))},
        "stores": [{"type": "file", "paths": ["~/.ssh"]}],
    }
    layer = Layer(source="default", data=data)
    origin = Origin("default")
    for path in _all_paths(data):
        layer.origins[path] = origin
    return layer


def _profile_layer(profile: str, cpus: int) -> Layer:
    data: dict[str, Any] = {"agent": profile_defaults(profile, cpus)}
    layer = Layer(source=f"profile:{profile}", data=data)
    for path in _all_paths(data):
        layer.origins[path] = Origin(profile_source(profile, str(path[-1])))
    return layer


def _all_paths(value: Any, path: KeyPath = ()) -> list[KeyPath]:
    out: list[KeyPath] = []
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((*path, key))
            out.extend(_all_paths(child, (*path, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append((*path, index))
            out.extend(_all_paths(child, (*path, index)))
    return out


# --------------------------------------------------------------------------- provenance


def _effective_sources(
    config: SecretivexConfig, origins: Mapping[KeyPath, Origin]
) -> dict[str, str]:
    """Dotted path -> source for every leaf, list and list item of the effective config."""
    dumped = config.model_dump(mode="json")
    sources: dict[str, str] = {}

    def visit(value: Any, path: KeyPath) -> None:
        if path:
            origin = origins.get(path)
            sources[format_key_path(path)] = origin.label() if origin else "default"
        if isinstance(value, dict):
            if path and not _is_list_item(path):
                # A section is not a value; only its keys get sources.
                del sources[format_key_path(path)]
            for key, child in value.items():
                visit(child, (*path, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                visit(child, (*path, index))

    visit(dumped, ())
    return sources


def _is_list_item(path: KeyPath) -> bool:
    return bool(path) and isinstance(path[-1], int)


_SECRETISH = re.compile(r"(^|_)(pin|passphrase|password|secret|token)$")


def redacted_dict(loaded: LoadedConfig | SecretivexConfig) -> dict[str, Any]:
    """The effective config as plain data (JSON types), safe to print or log.

    The model holds no secrets by design (PINs and passphrases are named by env var or
    file); any key that looks like it holds a secret value is replaced anyway.
    """
    config = loaded.config if isinstance(loaded, LoadedConfig) else loaded
    return typing.cast(dict[str, Any], _redact(config.model_dump(mode="json")))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "<redacted>" if _SECRETISH.search(key) and child is not None else _redact(child)
            for key, child in value.items()
        }
    if isinstance(value, list):
        return [_redact(child) for child in value]
    return value


# --------------------------------------------------------------------------- problems


def _problems_from_validation(
    exc: ValidationError,
    merged: Mapping[str, Any],
    origins: Mapping[KeyPath, Origin],
    rank: Mapping[str, int],
) -> list[ConfigProblem]:
    """One problem per pydantic error, located by origin, in layer then line order."""
    problems: list[ConfigProblem] = []
    seen: set[tuple[str, str]] = set()

    def emit(loc: KeyPath, message: str) -> None:
        origin, exact = _locate(loc, origins)
        source = origin.source if origin else "config"
        line = origin.line if origin else None
        column = origin.column if origin and exact else None
        key = format_key_path(_shown_path(loc))
        if (key, message) in seen:
            return
        seen.add((key, message))
        problems.append(ConfigProblem(source, key, line, column, message))

    cross_checked = False
    for error in exc.errors(include_url=False):
        loc = _clean_loc(error["loc"])
        ctx = error.get("ctx") or {}
        if error["type"] == "cross_check":
            cross_checked = True
            for sub_loc, message in ctx.get("problems", []):
                emit(tuple(sub_loc), message)
            continue
        if isinstance(ctx.get("field"), str):
            loc = (*loc, *ctx["field"].split("."))
        loc, message = _describe_error(error, loc, merged)
        emit(loc, message)
    if not cross_checked:
        # Field errors stop pydantic before the cross-key rules run: check the raw data
        # too, so one run reports everything.
        for sub_loc, message in cross_key_problems(with_store_names(merged)):
            emit(tuple(sub_loc), message)
    problems.sort(key=lambda p: (rank.get(p.source, len(rank)), p.line or 0, p.key_path))
    return problems


def _clean_loc(loc: tuple[str | int, ...]) -> KeyPath:
    """Drop the union tag pydantic inserts after ``stores[i]`` (``stores.1.pkcs11.pin``)."""
    out: list[str | int] = []
    for part in loc:
        if len(out) == 2 and out[0] == "stores" and isinstance(out[1], int) and part in STORE_TYPES:
            continue
        out.append(part)
    return tuple(out)


def _locate(loc: KeyPath, origins: Mapping[KeyPath, Origin]) -> tuple[Origin | None, bool]:
    for size in range(len(loc), 0, -1):
        origin = origins.get(loc[:size])
        if origin is not None:
            return origin, size == len(loc)
    return None, False


#: Keys next to a secret (``pin_env``, ``pin_file``, ``passphrase_file``, ...): a wrong
#: value there may be the PIN or passphrase itself, so problems never repeat it.
_NEAR_SECRET = re.compile(r"(^|_)(pin|passphrase|password|secret)(_|$)")


#: An unknown key is repeated in a problem only when it looks like a key someone meant
#: (a typo); anything else is a file's content read as YAML (a line of ``/etc/shadow``
#: ends in ``:``, so it parses as a key), which ``config validate`` run through sudo, or
#: an agent's start-up error in the journal, must not print.
_KEY_LIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _shown_path(loc: KeyPath) -> KeyPath:
    """``loc`` up to its first part that is not key-like (``_KEY_LIKE``)."""
    for index, part in enumerate(loc):
        if isinstance(part, str) and not _KEY_LIKE.fullmatch(part):
            return loc[:index]
    return loc


class _Hidden:
    """Stands for a value a problem must not repeat."""

    def __repr__(self) -> str:
        return "a value (not shown: it may be a secret)"


def _describe_error(
    error: ErrorDetails, loc: KeyPath, merged: Mapping[str, Any]
) -> tuple[KeyPath, str]:
    kind = error["type"]
    value = error.get("input")
    near_secret = loc and loc[-1] != "pin_command" and _NEAR_SECRET.search(str(loc[-1]))
    if near_secret and isinstance(value, str | int | float) and not isinstance(value, bool):
        value = _Hidden()
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden" and loc:
        allowed = _allowed_keys(loc[:-1], merged)
        what = "section" if len(loc) == 1 else "key"
        name = str(loc[-1])
        if not _KEY_LIKE.fullmatch(name):
            return loc, (
                f"unknown {what} whose name is not a config key's "
                f"({len(name)} characters; not repeated: it may be a file's content)"
            )
        return loc, _unknown_key_message(name, allowed, what)
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "union_tag_not_found":
        return (*loc, "type"), "each store needs a type: " + ", ".join(STORE_TYPES)
    if kind == "union_tag_invalid":
        return (*loc, "type"), (
            f"unknown store type {ctx.get('tag')!r}: use " + ", ".join(STORE_TYPES)
        )
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return loc, f"expected a mapping (key: value), got {_describe(value)}"
    if kind == "list_type":
        hint = " - write [item] for a single item" if isinstance(value, str | int) else ""
        if (
            isinstance(value, str)
            and loc
            and loc[-1] in ("command", "pin_command")
            and value.split()
        ):
            hint = " - argv is a list, not a shell line: write " + _argv_hint(value)
        return loc, f"expected a list, got {_describe(value)}{hint}"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return loc, f"expected a whole number, got {_describe(value)}"
    if kind in {"bool_parsing", "bool_type"}:
        return loc, f"expected true or false, got {_describe(value)}"
    if kind == "string_type":
        return loc, f"expected text, got {_describe(value)}"
    if kind == "greater_than_equal":
        return loc, f"must be at least {ctx.get('ge')}, got {_describe(value)}"
    if kind == "too_short":
        return loc, "must not be empty"
    if kind == "literal_error":
        return loc, f"must be one of {ctx.get('expected')}, got {_describe(value)}"
    if kind == "enum":
        return loc, f"must be one of {ctx.get('expected')}, got {_describe(value)}"
    return loc, str(error["msg"])


def _argv_hint(text: str) -> str:
    """``zenity --question --text='Allow?'`` as the YAML flow list it should have been."""
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.split()
    return str(yaml.safe_dump(parts, default_flow_style=True, width=1 << 30)).strip()


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _close_matches(key: str, allowed: Sequence[str]) -> list[str]:
    """The closest allowed key, if any is close (difflib: imported for a typo only)."""
    import difflib

    return difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)


def _unknown_key_message(key: str, allowed: Sequence[str], what: str) -> str:
    if key.lower() in allowed:
        return f"unknown {what} {key!r} - did you mean {key.lower()!r}? (keys are lower case)"
    close = _close_matches(key, allowed)
    if close:
        return f"unknown {what} {key!r} - did you mean {close[0]!r}?"
    if allowed:
        return f"unknown {what} {key!r} (expected one of: {', '.join(allowed)})"
    return f"unknown {what} {key!r}"


def _allowed_keys(parent: KeyPath, merged: Mapping[str, Any]) -> list[str]:
    """Field names of the model at ``parent`` (a key path into the merged data)."""
    model: type[BaseModel] | None = SecretivexConfig
    node: Any = merged
    annotation: Any = None
    for part in parent:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            annotation = _list_item(annotation)
            model = _model_of(annotation, node)
            continue
        if model is None:
            return []
        info = model.model_fields.get(part)
        if info is None:
            return []
        annotation = info.annotation
        node = node.get(part) if isinstance(node, dict) else None
        model = _model_of(annotation, node)
    return list(model.model_fields) if model is not None else []


def _list_item(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    return None


def _model_of(annotation: Any, node: Any) -> type[BaseModel] | None:
    """The model class for a value of this annotation (picking a store by its type)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is list:
            # The list itself has no fields; its items do (resolved at the index step).
            return None
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if isinstance(node, dict) and isinstance(node.get("type"), str):
                return _STORE_CLASSES.get(node["type"])
            if len(members) == 1:
                annotation = members[0]
            else:
                return None
        else:
            break
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
