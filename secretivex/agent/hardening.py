"""Process hardening done first thing in ``secretivex agent``, as OpenSSH's ssh-agent
does (``platform_disable_tracing``): the process is made non-dumpable, so other
processes of the same uid can neither ptrace it nor read ``/proc/PID/mem`` or
``/proc/PID/environ``, and no core file is written, so a crash never spills keys,
PINs or passphrases to disk. Root can still read the process's memory.

It runs before the agent forks its config loader, so it imports no more than it needs
(not ``logging``: the problems are logged later, by ``log_problems``)."""

from __future__ import annotations

import ctypes
import os
import resource
import sys

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def _libc() -> ctypes.CDLL:
    # The process's own symbols: libc is linked in (find_library would run `ldconfig -p`).
    return ctypes.CDLL(None, use_errno=True)


def disable_core_dumps() -> str | None:
    """RLIMIT_CORE 0 (soft and hard); returns the problem, if any."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        return f"cannot set RLIMIT_CORE to 0: {exc}"
    return None


def disable_tracing() -> str | None:
    """prctl(PR_SET_DUMPABLE, 0); returns the problem, if any (never fatal)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = _libc()
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            return f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(errno)}"
    except (OSError, AttributeError) as exc:
        return f"prctl(PR_SET_DUMPABLE, 0) unavailable: {exc}"
    return None


def is_dumpable() -> bool | None:
    """The current PR_GET_DUMPABLE value (None when it cannot be asked)."""
    try:
        return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return None


def harden_process() -> list[str]:
    """Apply both; returns the problems, to be logged once logging is set up (this runs
    before the config, and so the log format, is known)."""
    return [p for p in (disable_tracing(), disable_core_dumps()) if p]


def log_problems(problems: list[str]) -> None:
    if problems:
        import logging

        log = logging.getLogger(__name__)
        for problem in problems:
            log.warning("hardening: %s", problem)
