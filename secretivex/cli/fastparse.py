"""Plain command lines of simple typer commands, run without typer's parser.

typer 0.29 builds a pydantic ``TypeAdapter`` for every option while it parses: pydantic
and its plugin scan are about 120 ms, half of a ``secretivex client list`` that scripts
and CI steps run again and again. A command whose options are all plain ``str``,
``int`` and ``bool`` needs none of that: this module reads its options from the same
``Annotated`` declarations typer uses and calls the command function directly.

Only the common, well-formed forms take this path. Anything else (``--help``, an
unknown or repeated option, a value that is not an int, a value that starts with
``-``, an option with a callback, an environment variable or bounds, shell
completion) returns None and typer parses the line as before, with its own messages.
"""

from __future__ import annotations

import inspect
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.models import OptionInfo

__all__ = ["plain_options", "run_plain"]

#: OptionInfo attributes that only change help text: anything else set on an option
#: (a callback, envvar, bounds, prompt, a custom parser...) is typer's job.
_COSMETIC = frozenset(
    {"help", "param_decls", "show_default", "metavar", "rich_help_panel", "show_choices"}
)
_PLAIN_TYPES = (str, int, bool)


@dataclass(frozen=True)
class _Option:
    param: str
    kind: type  # str, int or bool
    value: bool = True  # what a bool flag sets


def plain_options(callback: Callable[..., Any]) -> dict[str, _Option] | None:
    """Option name -> what it sets, when every parameter of ``callback`` is a plain
    ``str``/``int``/``bool`` option (optionally ``None``); else None."""
    try:
        hints = typing.get_type_hints(callback, include_extras=True)
    except Exception:  # an annotation that does not resolve: typer reports it
        return None
    defaults = OptionInfo()
    table: dict[str, _Option] = {}
    for param, declared in inspect.signature(callback).parameters.items():
        if declared.default is declared.empty:
            return None  # a required option: typer says when it is missing
        hint = hints.get(param)
        if typing.get_origin(hint) is not typing.Annotated:
            return None
        base, *extras = typing.get_args(hint)
        infos = [e for e in extras if isinstance(e, typer.models.ParameterInfo)]
        if len(infos) != 1 or type(infos[0]) is not OptionInfo:
            return None  # an argument, or more than one declaration
        info = infos[0]
        if any(
            v != getattr(defaults, k)
            for k, v in vars(info).items()
            if k not in _COSMETIC and k != "default"
        ):
            return None
        kind = _plain_type(base)
        if kind is None:
            return None
        # In Annotated, typer takes Option's first positional (``default``) as the
        # first option name.
        first = () if info.default in (None, ...) else (info.default,)
        names = [*first, *(info.param_decls or ())]
        if any("/" in n or not n.startswith("-") for n in names):
            return None
        if not names:
            names = ["--" + param.replace("_", "-")]
            if kind is bool:
                table["--no-" + param.replace("_", "-")] = _Option(param, bool, False)
        for name in names:
            table[name] = _Option(param, kind)
    return table


def _plain_type(hint: Any) -> type | None:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and len(args) == 1 and typing.get_origin(hint) in (typing.Union, _UnionType):
        hint = args[0]
    return hint if hint in _PLAIN_TYPES else None


_UnionType = type(int | None)


def parse_plain(table: dict[str, _Option], argv: Sequence[str]) -> dict[str, Any] | None:
    """The keyword arguments ``argv`` gives, or None when typer should parse it."""
    values: dict[str, Any] = {}
    args = iter(argv)
    for arg in args:
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        option = table.get(name)
        if option is None or option.param in values:
            return None  # unknown, positional, combined short flags, or repeated
        if option.kind is bool:
            if eq:
                return None
            values[option.param] = option.value
            continue
        value = inline if eq else next(args, None)
        if value is None or (not eq and value.startswith("-")):
            return None
        if option.kind is int:
            if not (value.isascii() and value.isdigit()):
                return None  # signs, spaces, underscores: typer's rules decide
            values[option.param] = int(value)
        else:
            values[option.param] = value
    return values


def run_plain(app: typer.Typer, argv: Sequence[str]) -> bool:
    """Run ``argv`` (a command of ``app`` and its options) without typer's parser when
    its form is plain; False (nothing done) when typer should run it. Exits the process
    with the command's exit code as typer would."""
    if not argv or any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return False
    command = next((c for c in app.registered_commands if c.name == argv[0]), None)
    if command is None or command.callback is None:
        return False
    table = plain_options(command.callback)
    kwargs = None if table is None else parse_plain(table, argv[1:])
    if kwargs is None:
        return False
    try:
        command.callback(**kwargs)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    return True
