"""The life of one token store, as one table (pure code: no token, no I/O).

Everything that decides which state a token store is in lives here, the way h11
keeps its connection states in one module: a state enum, an event enum, and one
table of the transitions that exist. ``transition`` is the only way to move; an event
the table does not list for the current state is a bug in the store, not something to
paper over, so it raises ``TokenStateError``.

::

    STOPPED --LOADED--> CLOSED --OPENED--> READY --RETRY--> RECOVERING --OPENED--> READY
       ^                  |                  |                  |
       |                  +----FAILED--------+-----FAILED-------+--> FAULTED --RETRY--> RECOVERING
       |                  +--PIN_REFUSED-----+---PIN_REFUSED----+--> PIN_BLOCKED
       +------STOP------- every state;  RELOAD: every state but STOPPED --> CLOSED

``CLOSED`` and ``RECOVERING`` both mean "no session, about to open"; they differ in
who asked: ``CLOSED`` is a deliberate open (start, ``ssh-add -s``, SIGHUP), which may
spend a token's last PIN try; ``RECOVERING`` is automatic (after a fault or a module
re-initialisation) and never does.
"""

from __future__ import annotations

from enum import StrEnum

from secretivex.stores.base import StoreState

__all__ = ["TRANSITIONS", "TokenEvent", "TokenState", "TokenStateError", "transition"]


class TokenState(StrEnum):
    """Where a token store is."""

    #: no module loaded (before ``open()``, after ``aclose()``)
    STOPPED = "stopped"
    #: module loaded, no session; the next open is deliberate
    CLOSED = "closed"
    #: no session; the next open is an automatic recovery
    RECOVERING = "recovering"
    #: session open (logged in if a PIN is configured), keys listed
    READY = "ready"
    #: the token failed or is absent; retried with backoff
    FAULTED = "faulted"
    #: the PIN was refused, is locked, or could not be obtained; never retried on its
    #: own (a reload starts over)
    PIN_BLOCKED = "pin_blocked"

    @property
    def store_state(self) -> StoreState:
        """What ``client health`` shows for this state."""
        if self is TokenState.READY:
            return StoreState.OK
        if self is TokenState.STOPPED:
            return StoreState.STOPPED
        return StoreState.DEGRADED

    @property
    def retries(self) -> bool:
        """Does the maintenance loop re-open the token on its own?"""
        return self is TokenState.FAULTED


class TokenEvent(StrEnum):
    """What happened to a token store."""

    LOADED = "loaded"  # the module loaded
    OPENED = "opened"  # session open, login done, keys listed
    FAILED = "failed"  # the token faulted, is absent, or could not be opened
    PIN_REFUSED = "pin_refused"  # wrong/locked/expired PIN, last try, or no PIN to give
    RETRY = "retry"  # close the session to re-open it automatically
    RELOAD = "reload"  # SIGHUP: close the session, forget a PIN stop, open again
    STOP = "stop"  # aclose(): session closed, module released


class TokenStateError(RuntimeError):
    """An event the current state does not allow (a bug in the store)."""


_S, _E = TokenState, TokenEvent

#: state -> {event: next state}. Nothing else moves a token store.
TRANSITIONS: dict[TokenState, dict[TokenEvent, TokenState]] = {
    _S.STOPPED: {_E.LOADED: _S.CLOSED, _E.STOP: _S.STOPPED},
    _S.CLOSED: {
        _E.OPENED: _S.READY,
        _E.FAILED: _S.FAULTED,
        _E.PIN_REFUSED: _S.PIN_BLOCKED,
        _E.RELOAD: _S.CLOSED,
        _E.STOP: _S.STOPPED,
    },
    _S.RECOVERING: {
        _E.OPENED: _S.READY,
        _E.FAILED: _S.FAULTED,
        _E.PIN_REFUSED: _S.PIN_BLOCKED,
        _E.RELOAD: _S.CLOSED,
        _E.STOP: _S.STOPPED,
    },
    _S.READY: {
        _E.FAILED: _S.FAULTED,
        _E.PIN_REFUSED: _S.PIN_BLOCKED,  # an always-authenticate key refused the PIN
        _E.RETRY: _S.RECOVERING,  # the module was re-initialised under the session
        _E.RELOAD: _S.CLOSED,
        _E.STOP: _S.STOPPED,
    },
    _S.FAULTED: {
        _E.FAILED: _S.FAULTED,
        _E.PIN_REFUSED: _S.PIN_BLOCKED,
        _E.RETRY: _S.RECOVERING,
        _E.RELOAD: _S.CLOSED,
        _E.STOP: _S.STOPPED,
    },
    _S.PIN_BLOCKED: {
        _E.FAILED: _S.PIN_BLOCKED,  # still blocked: only a reload starts over
        _E.RELOAD: _S.CLOSED,
        _E.STOP: _S.STOPPED,
    },
}


def transition(state: TokenState, event: TokenEvent) -> TokenState:
    """The state after ``event``; ``TokenStateError`` if the table has no such move."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise TokenStateError(f"token store: no transition from {state} on {event}") from None
