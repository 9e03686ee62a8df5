"""Workload profiles: presets for the agent's limits, scaled by CPU count.

A profile fills the ``agent`` limits that no config file, environment variable or
CLI flag sets. It sits just above the built-in defaults in the layering, so any
explicit value wins.

The numbers come from the Rust ancestor's presets, with two deliberate changes:

* ``balanced`` (the default profile) keeps ``sign_timeout_ms: 0``: the ancestor
  applied no sign timeout unless a profile was named, and a timeout inherited
  silently by every install turned queue pressure into failures during fan-out;
* ``listen_backlog`` and ``idle_timeout_ms`` are given for every profile (the
  ancestor left some to the system default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_NAMES",
    "PROFILE_PURPOSE",
    "PerCpu",
    "ProfileName",
    "detect_cpu_count",
    "profile_defaults",
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


ProfileValue = int | PerCpu

#: Profile name -> ``agent`` key -> value. Keys here are exactly the keys profiles set.
PROFILES: dict[str, dict[str, ProfileValue]] = {
    "balanced": {
        "max_connections": 1024,
        "max_signers": PerCpu(4, 1),
        "sign_timeout_ms": 0,
        "identity_cache_ms": 1000,
        "listen_backlog": 128,
        "idle_timeout_ms": 0,
    },
    "fanout": {
        "max_connections": 8192,
        "max_signers": PerCpu(8, 8),
        "sign_timeout_ms": 250,
        "identity_cache_ms": 5000,
        "listen_backlog": 2048,
        "idle_timeout_ms": 10000,
    },
    "pssh": {
        "max_connections": 32768,
        "max_signers": PerCpu(12, 32),
        "sign_timeout_ms": 150,
        "identity_cache_ms": 10000,
        "listen_backlog": 4096,
        "idle_timeout_ms": 5000,
    },
    "low-memory": {
        "max_connections": 256,
        "max_signers": PerCpu(2, 2),
        "sign_timeout_ms": 2000,
        "identity_cache_ms": 250,
        "listen_backlog": 64,
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
        key: value.resolve(cpu_count) if isinstance(value, PerCpu) else value
        for key, value in PROFILES[name].items()
    }
