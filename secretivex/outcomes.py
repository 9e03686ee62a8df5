"""How a request ended, named once for the dispatcher, the audit log, metrics and confirm.

The values are the strings users see in audit records, metrics snapshots and
Prometheus labels (a contract: renaming one is a schema change).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

__all__ = ["CONFIRM_OUTCOMES", "ConfirmOutcome", "RequestKind", "RequestOutcome"]


class RequestKind(StrEnum):
    """Which agent message a request was (``malformed``/``unknown`` when unparsed)."""

    LIST = "list"
    SIGN = "sign"
    ADD = "add"
    REMOVE = "remove"
    REMOVE_ALL = "remove_all"
    ADD_SMARTCARD = "add_smartcard"
    REMOVE_SMARTCARD = "remove_smartcard"
    LOCK = "lock"
    UNLOCK = "unlock"
    EXTENSION = "extension"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"


class RequestOutcome(StrEnum):
    OK = "ok"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED = "unsupported"
    INTERNAL_ERROR = "internal_error"
    LOCKED = "locked"
    NOT_FOUND = "not_found"
    SCOPE_DENIED = "scope_denied"
    POLICY_DENIED = "policy_denied"
    DESTINATION_DENIED = "destination_denied"
    PEER_DENIED = "peer_denied"
    #: An open connection a reloaded config no longer admits (listener or peer gone).
    PEER_REVOKED = "peer_revoked"
    SIGN_ERROR = "sign_error"
    TIMEOUT = "timeout"
    CONFIRM_DENIED = "confirm_denied"
    CONFIRM_TIMEOUT = "confirm_timeout"
    CONFIRM_ERROR = "confirm_error"
    CONFIRM_CANCELLED = "confirm_cancelled"
    ADD_REFUSED = "add_refused"
    BAD_KEY = "bad_key"
    STORE_FULL = "store_full"
    REMOVE_REFUSED = "remove_refused"
    LOCK_REFUSED = "lock_refused"
    BAD_PASSPHRASE = "bad_passphrase"  # noqa: S105 - an outcome name
    ALREADY_LOCKED = "already_locked"
    UNLOCK_BUSY = "unlock_busy"
    EXT_FAILURE = "ext_failure"
    BIND_INVALID = "bind_invalid"


class ConfirmOutcome(StrEnum):
    """A confirmation's decision."""

    ALLOW = "allow"
    DENY = "deny"
    TIMEOUT = "timeout"
    ERROR = "error"
    CACHE_HIT = "cache_hit"
    #: The client went away while its confirmation was pending.
    HANGUP = "hangup"

    @property
    def allows(self) -> bool:
        return self in (ConfirmOutcome.ALLOW, ConfirmOutcome.CACHE_HIT)

    @property
    def request_outcome(self) -> RequestOutcome:
        """What a sign request that this confirmation refused ends as."""
        return _REFUSED_SIGN.get(self, RequestOutcome.CONFIRM_DENIED)


_REFUSED_SIGN: Final = {
    ConfirmOutcome.TIMEOUT: RequestOutcome.CONFIRM_TIMEOUT,
    ConfirmOutcome.ERROR: RequestOutcome.CONFIRM_ERROR,
    ConfirmOutcome.HANGUP: RequestOutcome.CONFIRM_CANCELLED,
}

#: Confirm outcomes every metrics snapshot lists (zero or not), in this order.
CONFIRM_OUTCOMES: Final[tuple[str, ...]] = tuple(
    o.value for o in ConfirmOutcome if o is not ConfirmOutcome.HANGUP
)
