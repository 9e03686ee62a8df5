"""Rate-limited warnings: a burst of refusals is one log line, not thousands.

Each reason logs at most once per window; the lines in between are counted and the
count is reported with the next line of that reason (or at shutdown). Metrics still
count every event: this only spares the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Reason:
    """When a reason was last logged and how many were suppressed since."""

    last: float
    suppressed: int = 0


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._window = window_s
        self._clock = clock
        self._reasons: dict[str, _Reason] = {}

    def warning(self, reason: str, msg: str, *args: object) -> None:
        """Log ``msg`` unless ``reason`` was logged less than a window ago."""
        now = self._clock()
        state = self._reasons.get(reason)
        if state is not None and now - state.last < self._window:
            state.suppressed += 1
            return
        suppressed = state.suppressed if state is not None else 0
        if suppressed:
            msg += " (%d more not logged in the previous %gs)"
            args = (*args, suppressed, self._window)
        self._reasons[reason] = _Reason(last=now)
        self._log.warning(msg, *args)

    def flush(self) -> None:
        """Report counts still pending (e.g. at shutdown)."""
        for reason, state in self._reasons.items():
            if state.suppressed:
                self._log.warning(
                    "%d more %s refusals were not logged (one line per %gs)",
                    state.suppressed,
                    reason,
                    self._window,
                )
                state.suppressed = 0
