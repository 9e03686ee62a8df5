"""Where the agent socket is: ``--socket``, else ``SSH_AUTH_SOCK``, else the default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_socket_path", "resolve_socket_path"]


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/secretivex/agent.sock``, fallback ``~/.secretivex/agent.sock``."""
    environ = os.environ if env is None else env
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "secretivex" / "agent.sock"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".secretivex" / "agent.sock"


def resolve_socket_path(
    explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The socket a client command should use, in the documented order."""
    if explicit:
        return Path(explicit).expanduser()
    environ = os.environ if env is None else env
    from_env = environ.get("SSH_AUTH_SOCK")
    if from_env:
        return Path(from_env)
    return default_socket_path(environ)
