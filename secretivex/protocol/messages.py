"""Agent protocol numbers and the immutable message values parse/encode exchange.

Numbers follow RFC 9987 (draft-miller-ssh-agent) and OpenSSH's ``authfd.h``. Values
are frozen, slotted dataclasses: cheap to build on the hot path, hashable, and safe
to hand between tasks. Fields that hold secrets (private key material, lock
passphrases, PINs) are left out of ``repr()`` so a logged message leaks nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final, Literal, TypeAlias

from .errors import ProtocolError
from .wire import mpint, string, text

# --- message numbers ---------------------------------------------------------------

SSH_AGENT_FAILURE: Final = 5
SSH_AGENT_SUCCESS: Final = 6
SSH_AGENTC_REQUEST_IDENTITIES: Final = 11
SSH_AGENT_IDENTITIES_ANSWER: Final = 12
SSH_AGENTC_SIGN_REQUEST: Final = 13
SSH_AGENT_SIGN_RESPONSE: Final = 14
SSH_AGENTC_ADD_IDENTITY: Final = 17
SSH_AGENTC_REMOVE_IDENTITY: Final = 18
SSH_AGENTC_REMOVE_ALL_IDENTITIES: Final = 19
SSH_AGENTC_ADD_SMARTCARD_KEY: Final = 20
SSH_AGENTC_REMOVE_SMARTCARD_KEY: Final = 21
SSH_AGENTC_LOCK: Final = 22
SSH_AGENTC_UNLOCK: Final = 23
SSH_AGENTC_ADD_ID_CONSTRAINED: Final = 25
SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED: Final = 26
SSH_AGENTC_EXTENSION: Final = 27
SSH_AGENT_EXTENSION_FAILURE: Final = 28
SSH_AGENT_EXTENSION_RESPONSE: Final = 29
# Legacy failure codes OpenSSH's client still treats as failure (authfd.c agent_failed).
SSH2_AGENT_FAILURE: Final = 30
SSH_COM_AGENT2_FAILURE: Final = 102

# --- sign request flags ------------------------------------------------------------

SSH_AGENT_RSA_SHA2_256: Final = 0x02
SSH_AGENT_RSA_SHA2_512: Final = 0x04

# --- key constraints ---------------------------------------------------------------

SSH_AGENT_CONSTRAIN_LIFETIME: Final = 1
SSH_AGENT_CONSTRAIN_CONFIRM: Final = 2
SSH_AGENT_CONSTRAIN_MAXSIGN: Final = 3
SSH_AGENT_CONSTRAIN_EXTENSION: Final = 255

# --- extension names ---------------------------------------------------------------

EXT_QUERY: Final = "query"
EXT_SESSION_BIND: Final = "session-bind@openssh.com"
#: secretivex's own: a UTF-8 JSON health document (stores, listeners, limits).
EXT_HEALTH: Final = "health@secretivex"
CONSTRAINT_RESTRICT_DESTINATION: Final = "restrict-destination-v00@openssh.com"
CONSTRAINT_ASSOCIATED_CERTS: Final = "associated-certs-v00@openssh.com"
CONSTRAINT_SK_PROVIDER: Final = "sk-provider@openssh.com"

MESSAGE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        SSH_AGENT_FAILURE: "SSH_AGENT_FAILURE",
        SSH_AGENT_SUCCESS: "SSH_AGENT_SUCCESS",
        SSH_AGENTC_REQUEST_IDENTITIES: "SSH_AGENTC_REQUEST_IDENTITIES",
        SSH_AGENT_IDENTITIES_ANSWER: "SSH_AGENT_IDENTITIES_ANSWER",
        SSH_AGENTC_SIGN_REQUEST: "SSH_AGENTC_SIGN_REQUEST",
        SSH_AGENT_SIGN_RESPONSE: "SSH_AGENT_SIGN_RESPONSE",
        SSH_AGENTC_ADD_IDENTITY: "SSH_AGENTC_ADD_IDENTITY",
        SSH_AGENTC_REMOVE_IDENTITY: "SSH_AGENTC_REMOVE_IDENTITY",
        SSH_AGENTC_REMOVE_ALL_IDENTITIES: "SSH_AGENTC_REMOVE_ALL_IDENTITIES",
        SSH_AGENTC_ADD_SMARTCARD_KEY: "SSH_AGENTC_ADD_SMARTCARD_KEY",
        SSH_AGENTC_REMOVE_SMARTCARD_KEY: "SSH_AGENTC_REMOVE_SMARTCARD_KEY",
        SSH_AGENTC_LOCK: "SSH_AGENTC_LOCK",
        SSH_AGENTC_UNLOCK: "SSH_AGENTC_UNLOCK",
        SSH_AGENTC_ADD_ID_CONSTRAINED: "SSH_AGENTC_ADD_ID_CONSTRAINED",
        SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED: "SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED",
        SSH_AGENTC_EXTENSION: "SSH_AGENTC_EXTENSION",
        SSH_AGENT_EXTENSION_FAILURE: "SSH_AGENT_EXTENSION_FAILURE",
        SSH_AGENT_EXTENSION_RESPONSE: "SSH_AGENT_EXTENSION_RESPONSE",
        SSH2_AGENT_FAILURE: "SSH2_AGENT_FAILURE",
        SSH_COM_AGENT2_FAILURE: "SSH_COM_AGENT2_FAILURE",
    }
)
"""Number -> name, for logs and metrics labels (unknown numbers are not in it)."""

# --- private keys ------------------------------------------------------------------

FieldKind: TypeAlias = Literal["s", "m", "u8"]
"""``s`` string (bytes), ``m`` mpint (int), ``u8`` byte (int)."""

KeyLayout: TypeAlias = tuple[tuple[str, FieldKind], ...]

_CERT: KeyLayout = (("cert", "s"),)
_ED25519: KeyLayout = (("pub", "s"), ("priv", "s"))
_SK: KeyLayout = (("application", "s"), ("flags", "u8"), ("key_handle", "s"), ("reserved", "s"))
_ECDSA_PUB: KeyLayout = (("curve", "s"), ("q", "s"))
_RSA_PRIV: KeyLayout = (("d", "m"), ("iqmp", "m"), ("p", "m"), ("q", "m"))

_LAYOUTS: dict[str, KeyLayout] = {
    "ssh-ed25519": _ED25519,
    "ssh-rsa": (("n", "m"), ("e", "m"), *_RSA_PRIV),
    "ssh-dss": (("p", "m"), ("q", "m"), ("g", "m"), ("y", "m"), ("x", "m")),
    "sk-ssh-ed25519@openssh.com": (("pub", "s"), *_SK),
    "sk-ecdsa-sha2-nistp256@openssh.com": (*_ECDSA_PUB, *_SK),
    # Certificates: the certificate blob replaces the public part, except that
    # (sk-)ed25519 repeats its public key (OpenSSH sshkey_private_serialize_opt).
    "ssh-ed25519-cert-v01@openssh.com": (*_CERT, *_ED25519),
    "ssh-rsa-cert-v01@openssh.com": (*_CERT, *_RSA_PRIV),
    "ssh-dss-cert-v01@openssh.com": (*_CERT, ("x", "m")),
    "sk-ssh-ed25519-cert-v01@openssh.com": (*_CERT, ("pub", "s"), *_SK),
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com": (*_CERT, *_SK),
}
for _bits in ("256", "384", "521"):
    _LAYOUTS[f"ecdsa-sha2-nistp{_bits}"] = (*_ECDSA_PUB, ("d", "m"))
    _LAYOUTS[f"ecdsa-sha2-nistp{_bits}-cert-v01@openssh.com"] = (*_CERT, ("d", "m"))
del _bits

KEY_LAYOUTS: Final[Mapping[str, KeyLayout]] = MappingProxyType(_LAYOUTS)
"""Key type -> the (name, kind) of each private-key field on the wire, in order.

Per RFC 9987 section 5.2 and OpenSSH's ``*_serialize_private``. A type not listed
cannot be parsed at all: its length is unknowable, so the whole message is refused.
"""


@dataclass(frozen=True, slots=True)
class WirePrivateKey:
    """A private key exactly as it travels in ADD_IDENTITY: key type + typed fields.

    The codec checks structure only (field count and kinds, per ``KEY_LAYOUTS``);
    whether the numbers make a valid key is the ``keys`` layer's business.
    """

    key_type: str
    fields: tuple[bytes | int, ...] = field(repr=False)

    @property
    def is_cert(self) -> bool:
        return self.key_type.endswith("-cert-v01@openssh.com")

    def get(self, name: str) -> bytes | int:
        """A field by its ``KEY_LAYOUTS`` name (``"d"``, ``"pub"``, ``"cert"`` ...)."""
        layout = KEY_LAYOUTS.get(self.key_type)
        if layout is not None:
            for index, (field_name, _kind) in enumerate(layout):
                if field_name == name and index < len(self.fields):
                    return self.fields[index]
        raise KeyError(name)

    def public_blob(self) -> bytes:
        """The public key blob (RFC 4253 6.6) this private key answers to.

        For certificates that is the certificate itself.
        """
        get = self.get
        try:
            kt = self.key_type
            if self.is_cert:
                return _as_bytes(get("cert"))
            if kt == "ssh-ed25519":
                return text(kt) + string(_as_bytes(get("pub")))
            if kt == "ssh-rsa":
                return text(kt) + mpint(_as_int(get("e"))) + mpint(_as_int(get("n")))
            if kt == "ssh-dss":
                return text(kt) + b"".join(mpint(_as_int(get(n))) for n in "pqgy")
            if kt.startswith("ecdsa-sha2-"):
                return text(kt) + string(_as_bytes(get("curve"))) + string(_as_bytes(get("q")))
            if kt == "sk-ssh-ed25519@openssh.com":
                return (
                    text(kt) + string(_as_bytes(get("pub"))) + string(_as_bytes(get("application")))
                )
            if kt == "sk-ecdsa-sha2-nistp256@openssh.com":
                return (
                    text(kt)
                    + string(_as_bytes(get("curve")))
                    + string(_as_bytes(get("q")))
                    + string(_as_bytes(get("application")))
                )
        except KeyError:
            raise ProtocolError(f"{self.key_type}: missing key fields") from None
        raise ProtocolError(f"unsupported key type {self.key_type!r}")


def _as_bytes(value: bytes | int) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError("key field should be a string")
    return value


def _as_int(value: bytes | int) -> int:
    if isinstance(value, bytes):
        raise ProtocolError("key field should be an integer")
    return value


# --- constraints -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HopKey:
    """A host key (or a CA key, when ``is_ca``) a hop must prove it holds."""

    blob: bytes
    is_ca: bool = False


@dataclass(frozen=True, slots=True)
class Hop:
    """One end of a destination constraint. Empty ``hostname`` = the agent's own host."""

    user: str = ""
    hostname: str = ""
    keys: tuple[HopKey, ...] = ()


@dataclass(frozen=True, slots=True)
class DestinationConstraint:
    """A permitted forwarding step: from one hop to the next.

    The codec does not apply OpenSSH's consistency rules (empty ``from_hop.user``,
    ``to_hop`` with a hostname and keys); the policy layer does, so that tests can
    still encode rule-breaking constraints.
    """

    from_hop: Hop
    to_hop: Hop


@dataclass(frozen=True, slots=True)
class DestinationConstraints:
    """``restrict-destination-v00@openssh.com``: where the key may be used (``ssh-add -h``)."""

    NAME: ClassVar[str] = CONSTRAINT_RESTRICT_DESTINATION
    constraints: tuple[DestinationConstraint, ...] = ()


@dataclass(frozen=True, slots=True)
class AssociatedCerts:
    """``associated-certs-v00@openssh.com``: certificates to graft onto token keys.

    ``certs`` is the raw certsblob (concatenated certificate strings).
    """

    NAME: ClassVar[str] = CONSTRAINT_ASSOCIATED_CERTS
    certs_only: bool
    certs: bytes


@dataclass(frozen=True, slots=True)
class SkProvider:
    """``sk-provider@openssh.com``: the FIDO middleware library for a security-key key."""

    NAME: ClassVar[str] = CONSTRAINT_SK_PROVIDER
    path: str


ConstraintExtension: TypeAlias = DestinationConstraints | AssociatedCerts | SkProvider


@dataclass(frozen=True, slots=True)
class Constraints:
    """Key constraints, each at most once. ``lifetime``/``maxsign`` None = absent.

    The wire order is not kept: encoding always writes lifetime, confirm, maxsign,
    then extensions in tuple order.
    """

    lifetime: int | None = None
    confirm: bool = False
    maxsign: int | None = None
    extensions: tuple[ConstraintExtension, ...] = ()

    @property
    def is_empty(self) -> bool:
        return (
            self.lifetime is None
            and not self.confirm
            and self.maxsign is None
            and not self.extensions
        )


NO_CONSTRAINTS: Final = Constraints()

# --- requests (client -> agent) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestIdentities:
    """SSH_AGENTC_REQUEST_IDENTITIES (11): list keys."""


@dataclass(frozen=True, slots=True)
class SignRequest:
    """SSH_AGENTC_SIGN_REQUEST (13). ``flags``: SSH_AGENT_RSA_SHA2_256/512."""

    key_blob: bytes
    data: bytes
    flags: int = 0


@dataclass(frozen=True, slots=True)
class AddIdentity:
    """SSH_AGENTC_ADD_IDENTITY (17), or ADD_ID_CONSTRAINED (25) when constrained."""

    key: WirePrivateKey
    comment: str
    constraints: Constraints = NO_CONSTRAINTS


@dataclass(frozen=True, slots=True)
class RemoveIdentity:
    """SSH_AGENTC_REMOVE_IDENTITY (18)."""

    key_blob: bytes


@dataclass(frozen=True, slots=True)
class RemoveAllIdentities:
    """SSH_AGENTC_REMOVE_ALL_IDENTITIES (19)."""


@dataclass(frozen=True, slots=True)
class AddSmartcardKey:
    """SSH_AGENTC_ADD_SMARTCARD_KEY (20), or _CONSTRAINED (26) when constrained.

    ``reader_id`` is the PKCS#11 module path.
    """

    reader_id: str
    pin: str = field(repr=False)
    constraints: Constraints = NO_CONSTRAINTS


@dataclass(frozen=True, slots=True)
class RemoveSmartcardKey:
    """SSH_AGENTC_REMOVE_SMARTCARD_KEY (21)."""

    reader_id: str
    pin: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Lock:
    """SSH_AGENTC_LOCK (22)."""

    passphrase: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Unlock:
    """SSH_AGENTC_UNLOCK (23)."""

    passphrase: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Extension:
    """SSH_AGENTC_EXTENSION (27): a name, then extension-specific bytes to the end.

    OpenSSH's layout (no inner length), which the typed helpers
    (``parse_session_bind``...) read.
    """

    name: str
    contents: bytes = b""


@dataclass(frozen=True, slots=True)
class SessionBind:
    """The contents of ``session-bind@openssh.com`` (OpenSSH PROTOCOL.agent section 1)."""

    NAME: ClassVar[str] = EXT_SESSION_BIND
    host_key: bytes
    session_id: bytes
    signature: bytes
    is_forwarding: bool


@dataclass(frozen=True, slots=True)
class UnknownRequest:
    """A message number this codec does not know: returned, so the agent can say FAILURE.

    Encoding writes it raw, whatever the number, so tests can also send malformed
    messages of known types.
    """

    msg_type: int
    body: bytes = b""


Request: TypeAlias = (
    RequestIdentities
    | SignRequest
    | AddIdentity
    | RemoveIdentity
    | RemoveAllIdentities
    | AddSmartcardKey
    | RemoveSmartcardKey
    | Lock
    | Unlock
    | Extension
    | UnknownRequest
)

# --- responses (agent -> client) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """SSH_AGENT_FAILURE (5); the legacy codes 30 and 102 parse to this too."""


@dataclass(frozen=True, slots=True)
class Success:
    """SSH_AGENT_SUCCESS (6)."""


@dataclass(frozen=True, slots=True)
class IdentitiesAnswer:
    """SSH_AGENT_IDENTITIES_ANSWER (12): (public key blob, comment) pairs."""

    identities: tuple[tuple[bytes, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SignResponse:
    """SSH_AGENT_SIGN_RESPONSE (14): the signature blob (format name + signature)."""

    signature: bytes


@dataclass(frozen=True, slots=True)
class ExtensionFailure:
    """SSH_AGENT_EXTENSION_FAILURE (28): an extension the agent supports failed.

    An extension the agent does not support gets SSH_AGENT_FAILURE (5) instead
    (draft-miller-ssh-agent §3.8, OpenSSH's ``process_extension``).
    """


@dataclass(frozen=True, slots=True)
class ExtensionResponse:
    """SSH_AGENT_EXTENSION_RESPONSE (29): the extension name echoed, then its bytes.

    The ``query`` reply is ``name="query"`` and contents = one string per supported
    extension name (RFC 9987; OpenSSH ssh-agent.c process_ext_query).
    """

    name: str
    contents: bytes = b""


Response: TypeAlias = (
    Failure | Success | IdentitiesAnswer | SignResponse | ExtensionFailure | ExtensionResponse
)
