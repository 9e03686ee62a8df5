"""Workload profiles: presets for the agent's limits, scaled by CPU count.

A profile fills the ``agent`` limits that no config file, environment variable or
CLI flag sets. It sits just above the built-in defaults in the layering, so any
explicit value wins.

The numbers come from the Rust ancestor's presets, with two deliberate changes:

* ``balanced`` (the default profile) keeps ``sign_timeout_ms: 0``: the ancestor
  applied no sign timeout unless a profile was named, and a timeout inherited
  silently by every install turned queue pressure into failures during fan-out;
* ``idle_timeout_ms`` is given for every profile (the ancestor left some to the
  system default);
* ``listen_backlog`` is the system maximum (``net.core.somaxconn``, read once at start)
  in every profile: a bigger backlog costs nothing until a burst uses it, and a small
  one turns a fan-out burst into EAGAIN connect failures (asyncio's
  ``open_unix_connection`` does not retry them). A configured value still wins.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final, Literal, get_args

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_NAMES",
    "PROFILE_PURPOSE",
    "SOMAXCONN_PATH",
    "PerCpu",
    "ProfileName",
    "SystemMax",
    "detect_cpu_count",
    "profile_defaults",
    "profile_source",
    "system_listen_backlog",
]

ProfileName = Literal["balanced", "fanout", "pssh", "low-memory"]
PROFILE_NAMES: tuple[str, ...] = get_args(ProfileName)
DEFAULT_PROFILE: ProfileName = "balanced"


@dataclass(frozen=True, slots=True)
class PerCpu:
    """A value of ``per_cpu x CPUs``, never below ``minimum``."""

    per_cpu: int
    minimum: int

    def resolve(self, cpus: int) -> int:
        return max(self.per_cpu * max(cpus, 1), self.minimum)

    def __str__(self) -> str:
        return f"{self.per_cpu} x CPUs (min {self.minimum})"


#: Where Linux keeps the largest listen(2) backlog it grants.
SOMAXCONN_PATH: Final = Path("/proc/sys/net/core/somaxconn")


@cache
def system_listen_backlog() -> int:
    """The system's largest listen backlog (``net.core.somaxconn``), read once per process;
    ``socket.SOMAXCONN`` when it cannot be read (non-Linux, no /proc)."""
    try:
        value = int(SOMAXCONN_PATH.read_text().strip())
    except (OSError, ValueError):
        return socket.SOMAXCONN
    return value if value > 0 else socket.SOMAXCONN


@dataclass(frozen=True, slots=True)
class SystemMax:
    """The system maximum of a kernel limit, read at start (the listen backlog)."""

    setting: str

    def resolve(self, cpus: int) -> int:
        return system_listen_backlog()

    def __str__(self) -> str:
        return self.setting


SOMAXCONN: Final = SystemMax("net.core.somaxconn")

ProfileValue = int | PerCpu | SystemMax

#: Profile name -> ``agent`` key -> value. Keys here are exactly the keys profiles set.
PROFILES: dict[str, dict[str, ProfileValue]] = {
    "balanced": {
        "max_connections": 1024,
        "max_signers": PerCpu(4, 1),
        "sign_timeout_ms": 0,
        "identity_cache_ms": 1000,
        "listen_backlog": SOMAXCONN,
        "idle_timeout_ms": 0,
    },
    "fanout": {
        "max_connections": 8192,
        "max_signers": PerCpu(8, 8),
        "sign_timeout_ms": 250,
        "identity_cache_ms": 5000,
        "listen_backlog": SOMAXCONN,
        "idle_timeout_ms": 10000,
    },
    "pssh": {
        "max_connections": 32768,
        "max_signers": PerCpu(12, 32),
        "sign_timeout_ms": 150,
        "identity_cache_ms": 10000,
        "listen_backlog": SOMAXCONN,
        "idle_timeout_ms": 5000,
    },
    "low-memory": {
        "max_connections": 256,
        "max_signers": PerCpu(2, 2),
        "sign_timeout_ms": 2000,
        "identity_cache_ms": 250,
        "listen_backlog": SOMAXCONN,
        "idle_timeout_ms": 60000,
    },
}

#: What each profile is for, one line each (used in --help and the docs).
PROFILE_PURPOSE: dict[str, str] = {
    "balanced": "workstations and small servers (the default)",
    "fanout": "many concurrent ssh sessions, e.g. Ansible with high forks",
    "pssh": "thousands of hosts at once (pssh, large fan-out); short timeouts",
    "low-memory": "small VMs and containers: few connections, few signer slots",
}


def detect_cpu_count() -> int:
    """CPUs this process may run on (affinity-aware), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(os.cpu_count() or 1, 1)


def profile_defaults(name: str, cpu_count: int) -> dict[str, int]:
    """The ``agent`` values a profile contributes on a machine with ``cpu_count`` CPUs.

    Raises ``KeyError`` for an unknown profile name.
    """
    return {
        key: value if isinstance(value, int) else value.resolve(cpu_count)
        for key, value in PROFILES[name].items()
    }


def profile_source(name: str, key: str) -> str:
    """Where a profile value comes from, as ``config show --sources`` names it:
    ``profile:balanced``, or ``profile:balanced (net.core.somaxconn)`` for a value read
    from the system."""
    value = PROFILES.get(name, {}).get(key)
    if isinstance(value, SystemMax):
        return f"profile:{name} ({value.setting})"
    return f"profile:{name}"
