"""Where the agent socket is: ``--socket``, else ``SSH_AUTH_SOCK``, else the default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from secretivex.defaults import default_socket_path

__all__ = ["default_socket_path", "resolve_socket_path"]


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
