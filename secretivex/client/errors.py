"""Errors raised by the agent clients. Every message is one line, safe to print."""

from __future__ import annotations

__all__ = [
    "AgentConnectionClosed",
    "AgentError",
    "AgentExtensionUnsupported",
    "AgentFailure",
    "AgentProtocolError",
    "AgentTimeout",
    "AgentUnavailable",
]


class AgentError(Exception):
    """Base class: talking to the agent did not work."""


class AgentUnavailable(AgentError):
    """No agent at the socket (missing, refused, permission denied, connect timeout)."""


class AgentTimeout(AgentError):
    """The agent did not answer within the response timeout; the connection is closed."""


class AgentProtocolError(AgentError):
    """The agent answered something malformed or unexpected, or hung up mid-request."""


class AgentConnectionClosed(AgentProtocolError):
    """The agent hung up (or the connection was already broken) before answering.

    Unlike a timeout, nothing is left pending: a caller may retry once on a new
    connection (a pooled connection may have died while idle).
    """


class AgentFailure(AgentError):
    """The agent answered SSH_AGENT_FAILURE (refused, unknown key, locked...)."""


class AgentExtensionUnsupported(AgentFailure):
    """The agent does not implement the requested extension."""
