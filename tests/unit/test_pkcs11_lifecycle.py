"""The token store's lifecycle table, in process (no token, no module)."""

from __future__ import annotations

import itertools

import pytest

from secretivex.stores.base import StoreState
from secretivex.stores.pkcs11.lifecycle import (
    TRANSITIONS,
    TokenEvent,
    TokenState,
    TokenStateError,
    transition,
)

S, E = TokenState, TokenEvent


def run(*events: TokenEvent, start: TokenState = S.STOPPED) -> TokenState:
    state = start
    for event in events:
        state = transition(state, event)
    return state


def test_table_covers_every_state_and_only_known_events() -> None:
    assert set(TRANSITIONS) == set(TokenState)
    for moves in TRANSITIONS.values():
        assert set(moves) <= set(TokenEvent)
        assert set(moves.values()) <= set(TokenState)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(TokenState, TokenEvent)))
def test_every_pair_either_moves_by_the_table_or_raises(state: S, event: E) -> None:
    expected = TRANSITIONS[state].get(event)
    if expected is None:
        with pytest.raises(TokenStateError, match=f"from {state} on {event}"):
            transition(state, event)
    else:
        assert transition(state, event) is expected


def test_stop_is_allowed_everywhere_and_reload_everywhere_but_stopped() -> None:
    for state in TokenState:
        assert transition(state, E.STOP) is S.STOPPED
        if state is not S.STOPPED:
            assert transition(state, E.RELOAD) is S.CLOSED
    with pytest.raises(TokenStateError):
        transition(S.STOPPED, E.RELOAD)


def test_open_fault_recover() -> None:
    assert run(E.LOADED, E.OPENED) is S.READY
    assert run(E.LOADED, E.OPENED, E.FAILED) is S.FAULTED
    assert run(E.LOADED, E.OPENED, E.FAILED, E.RETRY) is S.RECOVERING
    assert run(E.LOADED, E.OPENED, E.FAILED, E.RETRY, E.OPENED) is S.READY
    assert run(E.LOADED, E.FAILED, E.RETRY, E.FAILED) is S.FAULTED  # absent at start


def test_a_refused_pin_is_never_retried_only_reloaded() -> None:
    blocked = run(E.LOADED, E.PIN_REFUSED)
    assert blocked is S.PIN_BLOCKED and not blocked.retries
    for event in (E.RETRY, E.OPENED, E.PIN_REFUSED, E.LOADED):
        with pytest.raises(TokenStateError):
            transition(blocked, event)
    assert transition(blocked, E.FAILED) is S.PIN_BLOCKED
    assert run(E.RELOAD, E.OPENED, start=blocked) is S.READY
    # an always-authenticate key refusing the PIN while READY blocks too
    assert run(E.LOADED, E.OPENED, E.PIN_REFUSED) is S.PIN_BLOCKED


def test_only_a_ready_token_can_be_asked_to_sign_again_after_reinit() -> None:
    assert transition(S.READY, E.RETRY) is S.RECOVERING
    for state in (S.CLOSED, S.RECOVERING, S.STOPPED, S.PIN_BLOCKED):
        with pytest.raises(TokenStateError):
            transition(state, E.RETRY)


def test_health_and_retry_follow_the_state() -> None:
    assert S.READY.store_state is StoreState.OK
    assert S.STOPPED.store_state is StoreState.STOPPED
    for state in (S.FAULTED, S.PIN_BLOCKED, S.CLOSED, S.RECOVERING):
        assert state.store_state is StoreState.DEGRADED
    assert [state for state in TokenState if state.retries] == [S.FAULTED]
