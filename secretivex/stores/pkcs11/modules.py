"""Which PKCS#11 module a path names, and which modules ``ssh-add -s`` may load."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path

from secretivex.defaults import PKCS11_ALLOWLIST

#: Modules ``ssh-add -s`` may load when ``agent.pkcs11_allowlist`` is not set
#: (OpenSSH's ``ssh-agent -P`` default).
DEFAULT_ALLOWLIST: tuple[str, ...] = PKCS11_ALLOWLIST


def resolve_module(path: str | os.PathLike[str]) -> str:
    """The canonical path of a module (``realpath``), as OpenSSH compares providers."""
    return os.path.realpath(Path(os.fspath(path)).expanduser())


def same_module(a: object, b: object) -> bool:
    """Do two modules match? The one way to compare them (``ssh-add -e MODULE``).

    Each side is a path or a store with a ``module`` path; paths are compared after
    ``realpath``, as OpenSSH's agent does. Anything else never matches.
    """
    left = _module_of(a)
    return left is not None and left == _module_of(b)


def _module_of(value: object) -> str | None:
    if not isinstance(value, str | os.PathLike):
        value = getattr(value, "module", None)
        if not isinstance(value, str):
            return None
    path = os.fspath(value)
    return resolve_module(path) if path else None


def module_allowed(path: str | os.PathLike[str], allowlist: Sequence[str]) -> bool:
    """Is ``path`` (after ``realpath``) matched by the allowlist globs?

    Like OpenSSH's ``-P`` pattern list: ``*`` and ``?`` also match ``/``, and a
    pattern starting with ``!`` refuses what it matches even if another allows it.
    """
    canonical = resolve_module(path)
    allowed = False
    for pattern in allowlist:
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(canonical, pattern[1:]):
                return False
        elif fnmatch.fnmatchcase(canonical, pattern):
            allowed = True
    return allowed
