"""Test helpers for other projects' suites (``pip install 'secretivex[testing]'``).

``SecretivexContainer`` (a testcontainers container: a SoftHSM-backed agent whose
socket is on the host) and the pytest plugin (fixtures ``secretivex_agent`` and
``secretivex_agent_factory``, registered automatically). See docs/testing.md.

Importing this package is cheap and needs neither testcontainers nor Docker: the
container class is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._engine import docker_problem

if TYPE_CHECKING:
    from .container import (
        CONTAINER_SOCKET_DIR,
        DEFAULT_IMAGE,
        KEY_TYPES,
        AgentNotReadyError,
        AgentSocketWaitStrategy,
        ImageNotFoundError,
        SecretivexContainer,
    )

__all__ = [
    "CONTAINER_SOCKET_DIR",
    "DEFAULT_IMAGE",
    "KEY_TYPES",
    "AgentNotReadyError",
    "AgentSocketWaitStrategy",
    "ImageNotFoundError",
    "SecretivexContainer",
    "docker_problem",
]

_LAZY = frozenset(__all__) - {"docker_problem"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import container

        return getattr(container, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
