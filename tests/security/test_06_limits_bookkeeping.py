"""Item 6, the bookkeeping behind the process-level tests: who is refused when, how the
frame budget moves, and how a burst of warnings becomes one line plus a count."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from secretivex.agent.limits import (
    FREE_BYTES_PER_CONNECTION,
    MAX_CONNECTIONS,
    OWNER_RESERVE,
    PER_LISTENER,
    PER_UID,
    ConnectionLimits,
    ConnectionTracker,
)
from secretivex.agent.throttle import LogThrottle
from secretivex.config.models import AgentSection

OWNER, OTHER, THIRD = 1000, 2000, 3000


@dataclass
class _Listener:
    path: Path
    max_connections: int | None = None
    is_main: bool = False


def test_defaults_resolve_from_the_config_model() -> None:
    limits = ConnectionLimits.from_config(AgentSection(max_connections=256))
    assert limits.max_per_uid == 64  # a quarter of max_connections
    assert limits.reserved_for_owner == 16
    assert limits.max_buffered_bytes == 16 * 1024 * 1024
    assert limits.frame_timeout_s == 10.0
    tiny = ConnectionLimits.from_config(AgentSection(max_connections=4, frame_timeout_ms=0))
    assert tiny.reserved_for_owner == 2 and tiny.frame_timeout_s is None


def test_other_uids_never_take_the_owners_headroom() -> None:
    main, ci = _Listener(Path("/a"), is_main=True), _Listener(Path("/ci"), max_connections=30)
    tracker = ConnectionTracker(
        ConnectionLimits(max_connections=40, max_per_uid=25, reserved_for_owner=8), OWNER
    )
    for _ in range(25):
        assert tracker.refusal(main, OTHER) is None
        tracker.open(main, OTHER)
    assert tracker.refusal(main, OTHER) == PER_UID
    for _ in range(5):
        assert tracker.refusal(ci, THIRD) is None
        tracker.open(ci, THIRD)
    assert tracker.active == 30
    for _ in range(2):
        assert tracker.refusal(ci, THIRD) is None
        tracker.open(ci, THIRD)
    assert tracker.refusal(ci, THIRD) == OWNER_RESERVE  # 32 = 40 - 8 reserved
    for _ in range(8):
        assert tracker.refusal(main, OWNER) is None
        tracker.open(main, OWNER)
    assert tracker.refusal(main, OWNER) == MAX_CONNECTIONS
    tracker.close(main, OTHER)
    assert tracker.refusal(main, OWNER) is None
    # The reserve is the owner's main socket's: the owner's uid on a listener (root in a
    # container, when the agent runs as root) is held to it like any other peer.
    assert tracker.refusal(ci, OWNER) == OWNER_RESERVE
    assert tracker.by_listener[ci.path] == 7
    full_ci = ConnectionTracker(ConnectionLimits(max_connections=100), OWNER)
    for _ in range(3):
        full_ci.open(ci, OWNER)
    assert full_ci.refusal(ci, OWNER) is None
    assert full_ci.refusal(_Listener(ci.path, max_connections=3), OWNER) == PER_LISTENER


def test_frame_budget_is_shared_and_released() -> None:
    free = FREE_BYTES_PER_CONNECTION
    tracker = ConnectionTracker(ConnectionLimits(max_buffered_bytes=1000), OWNER)
    assert tracker.hold_bytes(0, free + 600)
    assert not tracker.hold_bytes(0, free + 500)  # a second big frame would pass the cap
    assert tracker.hold_bytes(0, free)  # small frames are never charged
    assert tracker.hold_bytes(0, free + 400)
    assert tracker.hold_bytes(free + 600, 0)  # frame finished
    assert tracker.buffered == 400 and tracker.released == free + 600
    assert tracker.hold_bytes(free + 400, free + 100) and tracker.buffered == 100


def test_throttle_logs_once_per_window_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("t"), window_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "t"):
        for _ in range(2000):
            throttle.warning("max_connections", "refused %s", "x")
        throttle.warning("peer_denied", "peer")
        now[0] = 10.5
        throttle.warning("max_connections", "refused %s", "y")
        throttle.warning("max_connections", "refused %s", "z")
        throttle.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused x",
        "peer",
        "refused y (1999 more not logged in the previous 10s)",
        "1 more max_connections refusals were not logged (one line per 10s)",
    ]
