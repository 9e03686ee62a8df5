"""Constants more than one layer needs, defined once, at the bottom (imports nothing).

The config models, the agent, the client and the test helpers all read these instead of
keeping their own copies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = [
    "PKCS11_ALLOWLIST",
    "SOCKET_PATH_MAX_BYTES",
    "STORE_TYPES",
    "default_socket_path",
]

#: Longest socket path accepted, in bytes. The kernel's ``sun_path`` holds 108 bytes
#: on Linux and 104 on macOS/BSD, terminating NUL included; 100 fits both.
SOCKET_PATH_MAX_BYTES: Final = 100

#: PKCS#11 modules ``ssh-add -s`` may load unless ``agent.pkcs11_allowlist`` says
#: otherwise (like ``ssh-agent -P``'s default).
PKCS11_ALLOWLIST: Final[tuple[str, ...]] = ("/usr/lib*/*", "/usr/local/lib*/*")

#: The ``type:`` of each configurable store, in the order the docs list them.
STORE_TYPES: Final[tuple[str, ...]] = ("file", "pkcs11", "upstream")


def default_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/secretivex/agent.sock``, else ``~/.secretivex/agent.sock``.

    A relative ``XDG_RUNTIME_DIR`` is ignored, as the XDG spec says to: the agent and
    its clients then agree on the home fallback instead of a path relative to
    wherever each one was started.
    """
    environ = os.environ if env is None else env
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if runtime and Path(runtime).is_absolute():
        return Path(runtime) / "secretivex" / "agent.sock"
    home = environ.get("HOME") or str(Path.home())
    return Path(home) / ".secretivex" / "agent.sock"
