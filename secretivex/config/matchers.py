"""Key matchers: the small language config files use to name keys.

A matcher is one string with a prefix:

* ``SHA256:<43 base64 chars>`` - one key, by the fingerprint ``ssh-keygen -l`` prints;
* ``comment:<glob>`` - keys whose comment matches a shell glob (``*``, ``?``, ``[...]``),
  case-sensitive;
* ``type:<key type>`` - keys of one SSH key type, e.g. ``type:ssh-ed25519``.

``parse_matcher`` is a pure function (no I/O) shared by the config models, which
reject malformed matchers at load time, and the policy layer, which evaluates them.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

__all__ = [
    "KEY_TYPES",
    "Matcher",
    "MatcherError",
    "MatcherKind",
    "parse_matcher",
]

MatcherKind = Literal["fingerprint", "comment", "type"]

_PLAIN_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
)


def _cert_type(key_type: str) -> str:
    if key_type.endswith("@openssh.com"):
        return key_type.removesuffix("@openssh.com") + "-cert-v01@openssh.com"
    return key_type + "-cert-v01@openssh.com"


#: Key type names a ``type:`` matcher accepts: plain keys and their OpenSSH certificates.
KEY_TYPES: tuple[str, ...] = _PLAIN_KEY_TYPES + tuple(_cert_type(t) for t in _PLAIN_KEY_TYPES)

# Signature algorithm names people confuse with key type names.
_SIGNATURE_ALGORITHMS = {
    "rsa-sha2-256": "ssh-rsa",
    "rsa-sha2-512": "ssh-rsa",
}

_FINGERPRINT_BODY = re.compile(r"[A-Za-z0-9+/]{43}")


class MatcherError(ValueError):
    """A matcher string is malformed; the message says how, in plain English."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """One parsed matcher. ``str(m)`` gives back the canonical text form."""

    kind: MatcherKind
    value: str

    def matches(self, fingerprint: str, comment: str, key_type: str) -> bool:
        """Whether a key with these properties is selected by this matcher.

        ``fingerprint`` is ``SHA256:...`` as ``ssh-keygen -l`` prints it; ``key_type`` is
        the name inside the public key blob (``ssh-ed25519``, ``ssh-rsa``...).
        """
        if self.kind == "fingerprint":
            return fingerprint == self.value
        if self.kind == "comment":
            return fnmatchcase(comment, self.value)
        return key_type == self.value

    def __str__(self) -> str:
        if self.kind == "fingerprint":
            return self.value
        return f"{self.kind}:{self.value}"


def parse_matcher(text: str) -> Matcher:
    """Parse ``SHA256:<fp>``, ``comment:<glob>`` or ``type:<key type>``.

    Raises ``MatcherError`` with a message fit to show a user.
    """
    if not isinstance(text, str):
        raise MatcherError(f"a matcher must be a string, not {type(text).__name__}")
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    if not sep:
        raise MatcherError(
            f"{text!r} is not a matcher: write SHA256:<fingerprint>, comment:<glob> "
            "or type:<key type>"
        )
    rest = rest.strip()
    if prefix == "SHA256":
        return Matcher("fingerprint", "SHA256:" + _check_fingerprint(rest))
    if prefix == "comment":
        if not rest:
            raise MatcherError("comment: needs a glob, e.g. comment:ci-*")
        return Matcher("comment", rest)
    if prefix == "type":
        return Matcher("type", _check_key_type(rest))
    if prefix.upper() in {"MD5", "SHA1", "SHA384", "SHA512"}:
        raise MatcherError(
            f"only SHA256 fingerprints are supported, not {prefix} "
            "(print them with: ssh-keygen -l -E sha256 -f KEY)"
        )
    if prefix.lower() == "sha256":
        raise MatcherError("write the fingerprint prefix as SHA256: (upper case)")
    raise MatcherError(
        f"unknown matcher kind {prefix!r}: write SHA256:<fingerprint>, comment:<glob> "
        "or type:<key type>"
    )


def _check_fingerprint(body: str) -> str:
    body = body.rstrip("=")
    if not _FINGERPRINT_BODY.fullmatch(body):
        raise MatcherError(
            "a SHA256 fingerprint is 'SHA256:' followed by 43 base64 characters "
            f"(got {len(body)} characters); copy it from ssh-keygen -l"
        )
    try:
        raw = base64.b64decode(body + "=", validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex already excludes this
        raise MatcherError(f"fingerprint is not valid base64: {exc}") from None
    if base64.b64encode(raw).decode("ascii").rstrip("=") != body:
        raise MatcherError("fingerprint is not canonical base64: check its last character")
    return body


def _check_key_type(name: str) -> str:
    if name in KEY_TYPES:
        return name
    if not name:
        raise MatcherError("type: needs a key type, e.g. type:ssh-ed25519")
    if name in _SIGNATURE_ALGORITHMS:
        raise MatcherError(
            f"{name} is a signature algorithm; the key type is {_SIGNATURE_ALGORITHMS[name]}"
        )
    import difflib  # only for an error message

    hint = difflib.get_close_matches(name, KEY_TYPES, n=1)
    if not hint and ("ssh-" + name) in KEY_TYPES:
        hint = ["ssh-" + name]
    suggestion = f" - did you mean type:{hint[0]}?" if hint else ""
    raise MatcherError(f"unknown key type {name!r}{suggestion}")
