"""Clients for any SSH agent (secretivex or OpenSSH's): async, sync, and helpers.

Used by ``secretivex client``, the bench and the tests; all of them speak through the
shared ``secretivex.protocol`` codec.
"""

from __future__ import annotations

from ._common import HEALTH_EXTENSION, AgentIdentity
from .aio import AgentClient
from .errors import (
    AgentConnectionClosed,
    AgentError,
    AgentExtensionUnsupported,
    AgentFailure,
    AgentProtocolError,
    AgentTimeout,
    AgentUnavailable,
)
from .paths import default_socket_path, resolve_socket_path
from .sync import SyncAgentClient

__all__ = [
    "HEALTH_EXTENSION",
    "AgentClient",
    "AgentConnectionClosed",
    "AgentError",
    "AgentExtensionUnsupported",
    "AgentFailure",
    "AgentIdentity",
    "AgentProtocolError",
    "AgentTimeout",
    "AgentUnavailable",
    "SyncAgentClient",
    "default_socket_path",
    "resolve_socket_path",
]
