"""One vocabulary of outcomes: confirm decisions map onto request outcomes, and the
strings (an audit/metrics contract) stay what they were."""

from __future__ import annotations

from secretivex.outcomes import CONFIRM_OUTCOMES, ConfirmOutcome, RequestOutcome
from secretivex.policy import confirm


def test_confirm_outcomes_refusing_a_sign() -> None:
    assert {o for o in ConfirmOutcome if o.allows} == {
        ConfirmOutcome.ALLOW,
        ConfirmOutcome.CACHE_HIT,
    }
    assert ConfirmOutcome.DENY.request_outcome is RequestOutcome.CONFIRM_DENIED
    assert ConfirmOutcome.TIMEOUT.request_outcome is RequestOutcome.CONFIRM_TIMEOUT
    assert ConfirmOutcome.ERROR.request_outcome is RequestOutcome.CONFIRM_ERROR
    assert ConfirmOutcome.HANGUP.request_outcome is RequestOutcome.CONFIRM_CANCELLED


def test_strings_are_the_documented_ones() -> None:
    assert CONFIRM_OUTCOMES == ("allow", "deny", "timeout", "error", "cache_hit")
    assert confirm.TIMEOUT == "timeout" and confirm.TIMEOUT is ConfirmOutcome.TIMEOUT
    assert RequestOutcome.PEER_DENIED == "peer_denied"
    assert all(o.value == o.name.lower() for o in RequestOutcome)
