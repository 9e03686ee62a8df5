"""What goes wrong with a configuration: ``ConfigProblem`` and ``ConfigError``.

Plain data with no pydantic behind it, so the agent process can receive them from the
short-lived process that validates the config (``secretivex.config.isolated``) and
report them exactly as an in-process load would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigProblem"]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with the configuration, with where it is.

    ``source`` is a file path as given, ``env:NAME``, ``cli:--flag``, ``profile:NAME``
    or ``default``; ``key_path`` looks like ``stores[1].pin_env`` (empty for problems
    with a whole file).
    """

    source: str
    key_path: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None and not self.key_path:
                where += f":{self.column}"
        parts = [where, self.key_path, self.message] if self.key_path else [where, self.message]
        return ": ".join(parts)


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` says why, one entry per problem.

    ``warnings`` are things that do not stop loading but are probably mistakes (a
    ``SECRETIVEX_`` variable that maps to no key)."""

    def __init__(
        self, problems: list[ConfigProblem], warnings: Sequence[ConfigProblem] = ()
    ) -> None:
        self.problems = list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __reduce__(
        self,
    ) -> tuple[type[ConfigError], tuple[list[ConfigProblem], list[ConfigProblem]]]:
        return (type(self), (self.problems, self.warnings))
