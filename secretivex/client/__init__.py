"""Clients for any SSH agent (secretivex or OpenSSH's): async, sync, and helpers.

Used by ``secretivex client``, the bench and the tests; all of them speak through the
shared ``secretivex.protocol`` codec.

The names below are imported on first use (``secretivex.lazy``): ``secretivex client
list`` needs the sync client, not anyio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from secretivex.lazy import exports

if TYPE_CHECKING:
    from ._common import HEALTH_EXTENSION, AgentIdentity, can_verify, check_signature
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
    "can_verify",
    "check_signature",
    "default_socket_path",
    "resolve_socket_path",
]

#: Public name -> the module defining it (imported on first use).
_HOMES: dict[str, str] = {
    "AgentClient": ".aio",
    "AgentConnectionClosed": ".errors",
    "AgentError": ".errors",
    "AgentExtensionUnsupported": ".errors",
    "AgentFailure": ".errors",
    "AgentIdentity": "._common",
    "AgentProtocolError": ".errors",
    "AgentTimeout": ".errors",
    "AgentUnavailable": ".errors",
    "HEALTH_EXTENSION": "._common",
    "SyncAgentClient": ".sync",
    "can_verify": "._common",
    "check_signature": "._common",
    "default_socket_path": ".paths",
    "resolve_socket_path": ".paths",
}

__getattr__ = exports(__name__, globals(), _HOMES)
