"""`secretivex config` commands: validate, show, schema.

Exit codes: 0 ok, 2 usage or config error. A config problem is printed as one line
(``file:line: key.path: message``), never as a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from secretivex.config.layers import format_key_path
from secretivex.config.loader import (
    CONFIG_FILES_ENV,
    ENV_PREFIX,
    ConfigError,
    ConfigPaths,
    ConfigProblem,
    LoadedConfig,
    load_config,
    redacted_dict,
)
from secretivex.config.schema import render_schema, shipped_schema_path

EXIT_CONFIG_ERROR = 2

app = typer.Typer(
    help=(
        "Check, inspect and describe the configuration.\n\n"
        "The agent reads, lowest first: built-in defaults, the profile's defaults, "
        "/etc/secretivex/config.yaml, /etc/secretivex/config.d/*.yaml (sorted), "
        "$XDG_CONFIG_HOME/secretivex/config.yaml, each --config FILE (else "
        f"{CONFIG_FILES_ENV}, colon-separated), {ENV_PREFIX}SECTION__KEY variables, "
        "then CLI flags. Mappings merge; lists replace.\n\n"
        "Reference: docs/configuration.md."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def default_paths() -> ConfigPaths:
    """The system and user layers the agent reads (tests replace this)."""
    return ConfigPaths.default(os.environ)


_NO_PATH_CHECKS_HELP = (
    "Skip checks against this machine: PKCS#11 module and confirm program files exist, "
    "user and group names resolve, config files are not writable by others (nor owned "
    "by another uid: a warning), audit.path passes the agent's own open checks "
    "(no symlink, our own file, a directory nobody else can change; nothing is created). "
    "For validating a config meant for another host, e.g. in a Nix build sandbox."
)
_CONFIG_HELP = (
    "Config file layered over the system and user files, like `secretivex agent --config`. "
    f"Repeat for several (later wins). Default: ${CONFIG_FILES_ENV} (colon-separated)."
)


def _report(problems: list[ConfigProblem], *, err: bool) -> None:
    for problem in problems:
        typer.echo(str(problem), err=err)


def warn(warnings: list[ConfigProblem] | tuple[ConfigProblem, ...]) -> None:
    """Probable mistakes that did not stop loading, on stderr (stdout stays parseable)."""
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)


def _problem_json(problem: ConfigProblem) -> dict[str, Any]:
    return {
        "source": problem.source,
        "key_path": problem.key_path,
        "line": problem.line,
        "column": problem.column,
        "message": problem.message,
        "text": str(problem),
    }


# --------------------------------------------------------------------------- validate


_VALIDATE_HELP = (
    "Check config files: print OK, or one line per problem and exit 2.\n\n"
    "A problem line names the file, the line, the key and what is wrong, e.g. "
    "agent.yaml:12: stores[1].pin_env: set only one of pin_env and pin_file\n\n"
    "With FILE arguments, each file is checked on its own over the built-in defaults "
    "(no /etc, XDG or SECRETIVEX_* layers). Without, everything the agent would read is "
    "checked, SECRETIVEX_* variables included; add --config FILE as you would for the agent."
    "\n\nExamples:\n\n"
    "  secretivex config validate /etc/secretivex/config.yaml\n"
    "  secretivex config validate --config team.yaml\n"
    "  secretivex config validate --no-path-checks pkcs11.yaml"
)


@app.command(help=_VALIDATE_HELP)
def validate(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="FILE",
            help="Config files to check, each on its own over the built-in defaults "
            "(no /etc, XDG or environment layers). Omit to check what the agent would load.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", metavar="FILE", help=_CONFIG_HELP, show_default=False),
    ] = None,
    no_path_checks: Annotated[
        bool, typer.Option("--no-path-checks", help=_NO_PATH_CHECKS_HELP)
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print {"ok": bool, "problems": [...], "warnings": [...]}; each entry has '
            "source, key_path, line, column, message and text. Exit codes are unchanged.",
        ),
    ] = False,
) -> None:
    if files and config:
        typer.echo(
            "Error: give FILE arguments (checked alone) or --config (layered like the "
            "agent), not both",
            err=True,
        )
        raise typer.Exit(EXIT_CONFIG_ERROR)
    check = not no_path_checks
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    if files:
        isolated_env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        for path in files:
            try:
                load_config(
                    config_files=[path],
                    env=isolated_env,
                    paths=ConfigPaths.isolated(),
                    check_paths=check,
                )
            except ConfigError as exc:
                problems.extend(exc.problems)
    else:
        try:
            loaded = load_config(
                config_files=config or (), paths=default_paths(), check_paths=check
            )
            warnings.extend(loaded.warnings)
        except ConfigError as exc:
            problems.extend(exc.problems)
            warnings.extend(exc.warnings)
    if as_json:
        document = {
            "ok": not problems,
            "problems": [_problem_json(p) for p in problems],
            "warnings": [_problem_json(w) for w in warnings],
        }
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        if problems:
            raise typer.Exit(EXIT_CONFIG_ERROR)
        return
    warn(warnings)
    if problems:
        _report(problems, err=False)
        raise typer.Exit(EXIT_CONFIG_ERROR)
    typer.echo("OK")


# --------------------------------------------------------------------------- show


_SHOW_HELP = (
    "Print the effective configuration after merging every layer.\n\n"
    "Reads the same layers as the agent. PINs and passphrases are never printed: the "
    "config only names the variable or file that holds them.\n\n"
    "Examples:\n\n"
    "  secretivex config show --sources\n"
    "  SECRETIVEX_AGENT__PROFILE=pssh secretivex config show --json"
)


@app.command(help=_SHOW_HELP)
def show(
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", metavar="FILE", help=_CONFIG_HELP, show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
    sources: Annotated[
        bool,
        typer.Option(
            "--sources",
            help="Say where each value came from: file:line, env:VAR, cli:--flag, "
            "profile:NAME or default. With --json: {config, sources}.",
        ),
    ] = False,
    no_path_checks: Annotated[
        bool, typer.Option("--no-path-checks", help=_NO_PATH_CHECKS_HELP)
    ] = False,
) -> None:
    try:
        loaded = load_config(
            config_files=config or (), paths=default_paths(), check_paths=not no_path_checks
        )
    except ConfigError as exc:
        warn(exc.warnings)
        _report(exc.problems, err=True)
        raise typer.Exit(EXIT_CONFIG_ERROR) from None
    warn(loaded.warnings)
    data = redacted_dict(loaded)
    if as_json:
        payload: Any = {"config": data, "sources": loaded.sources} if sources else data
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False))
    elif sources:
        typer.echo(render_yaml_with_sources(loaded, data), nl=False)
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


def render_yaml_with_sources(loaded: LoadedConfig, data: dict[str, Any]) -> str:
    """YAML of ``data`` with a ``# source`` comment on every value line (still valid YAML)."""
    files = ", ".join(str(p) for p in loaded.files) or "none"
    lines = [
        "# effective secretivex configuration",
        f"# files read (lowest first): {files}",
        f"# profile: {loaded.profile} on {loaded.cpu_count} CPUs",
    ]

    def src(path: tuple[str | int, ...]) -> str:
        return loaded.sources.get(format_key_path(path), "default")

    def mapping(value: dict[str, Any], path: tuple[str | int, ...], indent: int) -> None:
        pad = "  " * indent
        for key, child in value.items():
            here = (*path, key)
            if isinstance(child, dict):
                if child:
                    lines.append(f"{pad}{key}:")
                    mapping(child, here, indent + 1)
                else:
                    lines.append(f"{pad}{key}: {{}}")
            elif isinstance(child, list):
                if child:
                    lines.append(f"{pad}{key}:  # {src(here)}")
                    sequence(child, here, indent + 1)
                else:
                    lines.append(f"{pad}{key}: []  # {src(here)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(child)}  # {src(here)}")

    def sequence(items: list[Any], path: tuple[str | int, ...], indent: int) -> None:
        pad = "  " * indent
        for index, item in enumerate(items):
            here = (*path, index)
            if isinstance(item, dict) and item:
                start = len(lines)
                mapping(item, here, indent + 1)
                lines[start] = pad + "- " + lines[start][len(pad) + 2 :]
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-  # {src(here)}")
                sequence(item, here, indent + 1)
            else:
                lines.append(f"{pad}- {_scalar(item)}  # {src(here)}")

    mapping(data, (), 0)
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    text: str = yaml.safe_dump([value], default_flow_style=True, width=1 << 30).strip()
    inner = text[1:-1]
    if "\n" in inner:
        return json.dumps(value)
    return inner


# --------------------------------------------------------------------------- schema


_SCHEMA_HELP = (
    "Print the JSON Schema of config files (for editors and CI).\n\n"
    "The package ships a copy (secretivex config schema --path). "
    "The copy in the source tree is regenerated with:\n\n"
    "  secretivex config schema > config/secretivex.schema.json"
)


@app.command(help=_SCHEMA_HELP)
def schema(
    path: Annotated[
        bool,
        typer.Option(
            "--path",
            help="Print where the installed package keeps its copy of the schema (for an "
            "editor's '# yaml-language-server: $schema=' line) instead of the schema.",
        ),
    ] = False,
) -> None:
    if path:
        shipped = shipped_schema_path()
        if not shipped.is_file():
            typer.echo(f"secretivex: schema file missing from the package: {shipped}", err=True)
            raise typer.Exit(1)
        typer.echo(str(shipped))
        return
    typer.echo(render_schema(), nl=False)
