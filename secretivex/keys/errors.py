"""Errors raised while turning key material into usable keys."""

from __future__ import annotations


class KeyLoadError(Exception):
    """A key could not be loaded or added.

    The message is safe to log: it names the source (a file path, or the type and
    comment of a key added over the protocol) and says what is wrong, and never
    contains key bytes or passphrases. Loaders raise it ``from None`` so that no
    chained exception (or a traceback renderer showing locals) can carry secrets.
    """


class KeyFormatError(ValueError):
    """Key or certificate data is malformed or unsupported.

    A ``ValueError`` (so callers may catch either) whose message this package wrote
    itself and knows to be free of key material, unlike messages from ``cryptography``.
    """
