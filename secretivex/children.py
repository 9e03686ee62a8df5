"""Helper programs the agent starts (confirm hooks, SSH_ASKPASS, PIN programs).

They get a minimal environment, so a PIN or passphrase the agent was started with never
reaches them, and they run in their own session so that one ``killpg`` stops the program
and everything it spawned when its request is cancelled or the agent stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping

import anyio
from anyio.abc import Process

#: Variables a helper inherits from the agent when set (what a GUI prompt needs to reach
#: the person's display, and the locale); everything else stays behind.
PASSTHROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_RUNTIME_DIR",
    "XAUTHORITY",
    "DBUS_SESSION_BUS_ADDRESS",
)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def minimal_environment(
    source: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The pass-through variables and ``LC_*`` from ``source``, then ``extra``."""
    env = {name: source[name] for name in PASSTHROUGH if name in source}
    env.update((k, v) for k, v in source.items() if k.startswith("LC_"))
    env.setdefault("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


async def kill_process_group(process: Process) -> None:
    """SIGKILL the helper's whole process group (it runs in its own session) and reap
    the leader; the group id stays reserved until the leader is reaped, so this never
    hits a stranger."""
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
