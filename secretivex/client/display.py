"""Showing what an agent said on a terminal without letting it drive the terminal.

An agent's answers are not trusted text: ``SSH_AUTH_SOCK`` may be a forwarded socket
whose other end is someone else's root, and a key comment (or a key type name, or a
health document) can carry escape sequences that retitle the window, move the
cursor, fake more lines (``\\r``, ``\\n``) or reorder what follows (bidi controls).
OpenSSH prints comments through its strvis-like sanitiser; :func:`visible` does the
same for every piece of agent text the ``secretivex client`` commands print: anything
that is not a printable character (C0/C1 controls, DEL, Unicode format characters such
as bidi overrides and zero-width marks, line/paragraph separators, unassigned code
points, bytes that were not UTF-8) becomes a visible escape.
"""

from __future__ import annotations

__all__ = ["visible"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def visible(text: str) -> str:
    """``text`` with every non-printable character written as an escape (one line)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else _escape(ch) for ch in text)
