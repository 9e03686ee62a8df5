"""The two exceptions of the protocol layer.

Every parse function raises only :class:`ProtocolError` (whatever the input), so the
server can answer ``SSH_AGENT_FAILURE`` or drop the connection with one ``except``.
Messages never quote field contents: they may be secrets.
"""

from __future__ import annotations

__all__ = ["FrameError", "ProtocolError"]


class ProtocolError(ValueError):
    """Bytes that are not a well-formed agent message (or a value that cannot be encoded)."""


class FrameError(ProtocolError):
    """A frame whose declared length is zero or above ``MAX_MESSAGE_SIZE``.

    The stream cannot be resynchronised after this: the connection must be closed.
    """
