"""The audit log: one JSON line per request saying who asked for what and what happened.

Never key material, signed data, passphrases or PINs: only fingerprints, sizes and
outcomes.

Opening: ``config.filechecks.open_append`` (no symlink in the last component, a regular
file of the agent's own with one link and no group/other write, in a directory only
the agent or root can change), at start and whenever a reload changes ``audit.path``:
the only times the file is (re)opened. ``config validate`` runs the same checks.

Integrity on a full or failing disk: each record is one ``os.write`` of one complete
line, so records never interleave; a write that fails is dropped (signing goes on). A
short write's fragment is cut off again (ftruncate); where that is impossible (stderr,
a pipe) the next record starts with a newline, so a torn fragment never glues onto a
good record. Drops are counted (``dropped``, the metrics'
``audit.dropped``) and reported by a WARNING at most every ``WARN_INTERVAL_S``.

Refused peers are aggregated: the first ``peer_denied`` record per (listener, peer uid)
is written as usual; further ones within ``DENIED_WINDOW_S`` of it are counted, and
one summary record follows (``"aggregated": true``, ``"count"`` = refusals it stands
for, ``"first_time"``/``"time"`` = first and last of them, other fields from the last
one). The summary is written with the next audit record after the window ends, or at
exit, whichever comes first. A peer retrying in a loop costs one line per window.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from secretivex.config.filechecks import UnsafePathError, open_append
from secretivex.outcomes import RequestOutcome

log = logging.getLogger(__name__)

PEER_DENIED = RequestOutcome.PEER_DENIED.value
PEER_REVOKED = RequestOutcome.PEER_REVOKED.value


class AuditPathError(Exception):
    """``audit.path`` cannot be opened for appending, or not safely: a symlink, a file
    that is not ours alone, a directory others can write (``config.filechecks``; a
    config error: exit 2)."""


@dataclass(slots=True)
class _DeniedBurst:
    """Peer refusals since the last one written, summarised when the burst ends."""

    started: float  # monotonic time of the written record
    count: int = 0  # refusals since, not yet written
    first_time: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    WARN_INTERVAL_S = 10.0
    DENIED_WINDOW_S = 10.0
    MAX_BURSTS = 1024

    def __init__(self, path: str | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._fd: int | None = None
        self._owns_fd = False
        if path == "-":
            self._fd = 2
        elif path:
            try:
                self._fd = open_append(path)
            except UnsafePathError as exc:
                raise AuditPathError(f"audit.path: {exc}") from None
            self._owns_fd = True
        #: Records lost to write errors since start (never reset; metrics keep their own).
        self.dropped = 0
        #: Called with 1 for each dropped record (the agent wires the metrics counter).
        self.on_drop: Callable[[int], None] | None = None
        self._torn = False
        self._unreported = 0
        self._last_warning = -math.inf
        self._last_reason = ""
        self._bursts: dict[tuple[str, int], _DeniedBurst] = {}
        self._dumps: Callable[[Any], bytes] = _dumps if self._fd is None else _orjson_dumps()

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def record(self, **fields: Any) -> None:
        if self._fd is None:
            return
        fields["time"] = time.time()
        now = self._clock()
        if self._bursts:
            self._flush_bursts(now, everything=False)
        if fields.get("outcome") == PEER_DENIED and self._aggregated(fields, now):
            return
        self._write(fields)

    # -- peer_denied aggregation --------------------------------------------------------

    def _aggregated(self, fields: dict[str, Any], now: float) -> bool:
        """True when this refusal is counted into a pending summary instead of written."""
        key = (str(fields.get("listener", "")), int(fields.get("peer_uid", -1)))
        burst = self._bursts.get(key)
        if burst is not None and now - burst.started < self.DENIED_WINDOW_S:
            if burst.count == 0:
                burst.first_time = fields["time"]
            burst.count += 1
            burst.last = fields
            return True
        if len(self._bursts) >= self.MAX_BURSTS:
            self._flush_bursts(now, everything=True)
        self._bursts[key] = _DeniedBurst(started=now)
        return False

    def _flush_bursts(self, now: float, *, everything: bool) -> None:
        for key, burst in list(self._bursts.items()):
            if everything or now - burst.started >= self.DENIED_WINDOW_S:
                del self._bursts[key]
                if burst.count:
                    self._write(
                        {
                            **burst.last,
                            "aggregated": True,
                            "count": burst.count,
                            "first_time": burst.first_time,
                        }
                    )

    # -- writing ------------------------------------------------------------------------

    def _write(self, fields: dict[str, Any]) -> None:
        assert self._fd is not None
        line = self._dumps(fields) + b"\n"
        data = b"\n" + line if self._torn else line
        try:
            written = os.write(self._fd, data)
        except OSError as exc:  # a full disk must never take signing down
            self._dropped(exc.strerror or str(exc))
            return
        if written < len(data):
            self._torn = not self._cut(written)
            self._dropped("short write (disk full?)")
            return
        self._torn = False
        if self._last_reason and self._clock() - self._last_warning >= self.WARN_INTERVAL_S:
            self._last_warning = self._clock()
            log.warning(
                "audit log %s: writing again (%d record(s) dropped since the last warning, "
                "%d in total)",
                self.path,
                self._unreported,
                self.dropped,
            )
            self._unreported = 0
            self._last_reason = ""

    def _cut(self, written: int) -> bool:
        """Remove the fragment a short write appended; False when that is impossible
        (a pipe, stderr), so the next record starts on a fresh line instead."""
        assert self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
            if size < written:
                return False
            os.ftruncate(self._fd, size - written)
        except OSError:
            return False
        return True

    def _dropped(self, reason: str) -> None:
        self.dropped += 1
        self._unreported += 1
        self._last_reason = reason
        if self.on_drop is not None:
            self.on_drop(1)
        now = self._clock()
        if now - self._last_warning >= self.WARN_INTERVAL_S:
            self._last_warning = now
            log.warning(
                "audit log %s: %d record(s) dropped (%s); signing continues",
                self.path,
                self._unreported,
                reason,
            )
            self._unreported = 0

    def close(self) -> None:
        if self._fd is not None and self._bursts:
            self._flush_bursts(self._clock(), everything=True)
        if self._fd is not None and self._owns_fd:
            os.close(self._fd)
        self._fd = None


def _orjson_dumps() -> Callable[[Any], bytes]:
    """orjson's ``dumps``, imported only by an audit log that writes somewhere."""
    import orjson

    return orjson.dumps


def _dumps(value: Any) -> bytes:
    return _orjson_dumps()(value)
