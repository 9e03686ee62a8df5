"""Exit-code discipline shared by ``secretivex client`` and ``secretivex bench``.

0 ok, 1 runtime error, 2 usage error, 3 guardrail failed. Errors print one line on
stderr, never a traceback (set ``SECRETIVEX_DEBUG=1`` to see one).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import typer

from secretivex.client.errors import AgentError

__all__ = ["EXIT_GUARDRAIL", "EXIT_RUNTIME", "EXIT_USAGE", "cli_errors", "fail"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_GUARDRAIL = 3

P = ParamSpec("P")
T = TypeVar("T")


class UsageError(Exception):
    """Bad flags or arguments (exit 2)."""


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    """Print ``error: message`` on stderr and exit ``code``.

    Messages may quote what an agent sent (key comments, type names): non-printable
    characters are escaped so the line stays one line and cannot drive the terminal.
    """
    from secretivex.client.display import visible

    typer.echo(f"error: {visible(message)}", err=True)
    raise typer.Exit(code)


def cli_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Turn expected exceptions into one-line messages and documented exit codes."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except UsageError as exc:
            fail(str(exc), EXIT_USAGE)
        except AgentError as exc:
            fail(str(exc), EXIT_RUNTIME)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # stdout closed early (e.g. piped into head): not an error worth a message.
            with_devnull()
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("SECRETIVEX_DEBUG"):
                raise
            from secretivex.bench.runner import BenchError

            if isinstance(exc, BenchError | OSError | ValueError):
                fail(str(exc) or type(exc).__name__, EXIT_RUNTIME)
            fail(f"internal error ({type(exc).__name__}: {exc})", EXIT_RUNTIME)

    return wrapper


def with_devnull() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:  # pragma: no cover - best effort
        pass
