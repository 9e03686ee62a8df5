"""The agent's metrics recorder: counters, gauges and histograms behind cheap calls.

Every ``on_*`` method runs on the agent's single event-loop thread, on the hot path of
each request: plain attribute and dict updates, no locks, no allocation beyond a new
dict key the first time a label value is seen. ``snapshot`` builds the JSON document
described in ``docs/metrics.md``; its shape is pinned by ``snapshot.schema.json`` and the
golden schema test (see the compatibility policy there).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from secretivex.metrics.guardrails import suggest_queue_wait
from secretivex.metrics.histogram import Log2Histogram
from secretivex.outcomes import CONFIRM_OUTCOMES

__all__ = [
    "CONFIRM_OUTCOMES",
    "SCHEMA_VERSION",
    "SNAPSHOT_KINDS",
    "MetricsRecorder",
]

#: Bump on any rename, removal or type change of a snapshot field (not on additions).
SCHEMA_VERSION: Final = 1

#: ``periodic``: the writer's timed write; ``snapshot``: on demand (SIGUSR1);
#: ``reset``: right after counters were zeroed (SIGUSR2); ``interval``: the final write
#: that closes the last interval when the writer stops.
SNAPSHOT_KINDS: Final = ("interval", "periodic", "snapshot", "reset")


#: ``platform.python_implementation()`` names, without importing platform (0.1 MiB).
_IMPLEMENTATIONS: Final = {"cpython": "CPython", "pypy": "PyPy", "graalpy": "GraalVM"}


def _versions() -> dict[str, str]:
    from secretivex import __version__

    return {
        "secretivex": __version__,
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "implementation": _IMPLEMENTATIONS.get(sys.implementation.name, sys.implementation.name),
    }


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


class MetricsRecorder:
    """In-memory metrics of one agent process.

    ``profile`` is the active workload profile (for the queue-wait suggestion);
    ``clock_ms`` returns Unix time in ms (injectable for tests).
    """

    def __init__(
        self,
        profile: str = "balanced",
        *,
        clock_ms: Callable[[], int] | None = None,
        cpus: int | None = None,
    ) -> None:
        self.profile = profile
        self._clock_ms: Callable[[], int] = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._cpus = cpus
        self._versions = _versions()
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self.started_unix_ms = self._clock_ms()
        self._suggestion: dict[str, Any] | None = None
        #: Gauges survive ``reset``; counters do not.
        self.connections_active = 0
        self._stores: list[dict[str, Any]] = []
        self._zero()
        #: Set by ``run_metrics_writer`` so signal handlers can ask for an early write.
        self._wake: Callable[[], None] | None = None
        self._pending_kind: str | None = None

    # -- state -------------------------------------------------------------------------

    def _zero(self) -> None:
        self.reset_unix_ms = self._clock_ms()
        self.connections_opened = 0
        self.connections_closed = 0
        self.connections_max_active = self.connections_active
        self.connections_rejected: dict[str, int] = {}
        #: kind -> outcome -> count
        self.requests: dict[str, dict[str, int]] = {}
        #: kind -> [count, sum_ns, max_ns]
        self.request_latency_by_kind: dict[str, list[int]] = {}
        self.request_latency = Log2Histogram()
        self.queue_wait = Log2Histogram()
        self.signs: dict[str, int] = {}
        self.confirm: dict[str, int] = {}
        #: outcome -> reason -> count
        self.confirm_reasons: dict[str, dict[str, int]] = {}
        self.list_cache_hits = 0
        self.list_cache_misses = 0
        self.audit_dropped = 0

    def reset(self) -> None:
        """Zero every counter and histogram (SIGUSR2). Gauges keep their values."""
        self._zero()

    # -- hot path ------------------------------------------------------------------------

    def on_connection_open(self) -> None:
        self.connections_opened += 1
        active = self.connections_active + 1
        self.connections_active = active
        if active > self.connections_max_active:
            self.connections_max_active = active

    def on_connection_close(self) -> None:
        self.connections_closed += 1
        if self.connections_active > 0:
            self.connections_active -= 1

    def on_connection_rejected(self, reason: str) -> None:
        """A connection refused before serving (limit reached, peer check failed...)."""
        _bump(self.connections_rejected, reason)

    def on_request(self, kind: str, outcome: str, latency_ns: int) -> None:
        """One request answered: ``kind`` e.g. ``sign``/``list``, ``outcome`` e.g. ``ok``."""
        by_outcome = self.requests.get(kind)
        if by_outcome is None:
            by_outcome = self.requests[kind] = {}
            self.request_latency_by_kind[kind] = [0, 0, 0]
        by_outcome[outcome] = by_outcome.get(outcome, 0) + 1
        if latency_ns < 0:
            latency_ns = 0
        stats = self.request_latency_by_kind[kind]
        stats[0] += 1
        stats[1] += latency_ns
        if latency_ns > stats[2]:
            stats[2] = latency_ns
        self.request_latency.record(latency_ns)

    def on_queue_wait(self, ns: int) -> None:
        """Time a request waited for a signer slot (0 when one was free)."""
        self.queue_wait.record(ns)

    def on_sign(self, store: str) -> None:
        _bump(self.signs, store)

    def on_confirm(self, outcome: str, reason: str | None = None) -> None:
        """A confirmation decision: allow, deny, timeout, error or cache_hit."""
        _bump(self.confirm, outcome)
        if reason:
            reasons = self.confirm_reasons.get(outcome)
            if reasons is None:
                reasons = self.confirm_reasons[outcome] = {}
            _bump(reasons, reason)

    def on_audit_dropped(self, count: int = 1) -> None:
        """Audit records lost to a full or failing audit disk (signing went on)."""
        self.audit_dropped += count

    def on_list_cache(self, hit: bool) -> None:
        if hit:
            self.list_cache_hits += 1
        else:
            self.list_cache_misses += 1

    def set_store_health(self, healths: Sequence[Any]) -> None:
        """Replace the per-store health list (``StoreHealth`` objects, in listing order)."""
        stores = []
        for health in healths:
            state = getattr(health.state, "value", health.state)
            stores.append(
                {
                    "name": str(health.name),
                    "kind": str(health.kind),
                    "state": str(state),
                    "keys": int(health.keys),
                    "last_error": health.last_error,
                    "since_unix_ms": int(health.since_unix_ms),
                }
            )
        self._stores = stores

    # -- writer hooks --------------------------------------------------------------------

    def request_write(self, kind: str = "snapshot") -> None:
        """Ask a running ``run_metrics_writer`` to write now (e.g. from a SIGUSR1 handler).

        ``kind="reset"`` zeroes the counters first (SIGUSR2). Without a writer the
        request is kept and served by the writer's next loop.
        """
        if kind == "reset":
            self.reset()
        self._pending_kind = kind
        if self._wake is not None:
            self._wake()

    # -- snapshots -----------------------------------------------------------------------

    def queue_wait_suggestion(self) -> dict[str, Any]:
        if self._suggestion is None:
            try:
                self._suggestion = suggest_queue_wait(self.profile, self._cpus)
            except KeyError:
                self._suggestion = suggest_queue_wait("balanced", self._cpus)
                self._suggestion["profile"] = self.profile
        return self._suggestion

    def snapshot(self, kind: str = "snapshot") -> dict[str, Any]:
        """A JSON-ready copy of every metric (see ``docs/metrics.md``)."""
        if kind not in SNAPSHOT_KINDS:
            raise ValueError(f"unknown snapshot kind {kind!r}; expected one of {SNAPSHOT_KINDS}")
        captured = self._clock_ms()
        requests_by_kind: dict[str, Any] = {}
        total_requests = 0
        for req_kind, outcomes in self.requests.items():
            count, total_ns, max_ns = self.request_latency_by_kind[req_kind]
            total_requests += count
            requests_by_kind[req_kind] = {
                "count": count,
                "outcomes": dict(outcomes),
                "latency_sum_ns": total_ns,
                "latency_max_ns": max_ns,
                "latency_avg_ns": total_ns // count if count else 0,
            }
        queue_wait = self.queue_wait.summary()
        queue_wait["suggested"] = dict(self.queue_wait_suggestion())
        queue_wait["suggested"].pop("env", None)
        lookups = self.list_cache_hits + self.list_cache_misses
        return {
            "meta": {
                "schema_version": SCHEMA_VERSION,
                "kind": kind,
                "captured_unix_ms": captured,
                "started_unix_ms": self.started_unix_ms,
                "reset_unix_ms": self.reset_unix_ms,
                "uptime_ms": max(captured - self.started_unix_ms, 0),
                "window_ms": max(captured - self.reset_unix_ms, 0),
                "profile": self.profile,
                "versions": dict(self._versions),
                "host": self._host,
                "pid": self._pid,
            },
            "connections": {
                "opened": self.connections_opened,
                "closed": self.connections_closed,
                "active": self.connections_active,
                "max_active": self.connections_max_active,
                "rejected_total": sum(self.connections_rejected.values()),
                "rejected": dict(self.connections_rejected),
            },
            "requests": {
                "total": total_requests,
                "by_kind": requests_by_kind,
                "latency": self.request_latency.summary(),
            },
            "queue_wait": queue_wait,
            "signs": {"total": sum(self.signs.values()), "by_store": dict(self.signs)},
            "confirm": {
                "total": sum(self.confirm.values()),
                "outcomes": {outcome: self.confirm.get(outcome, 0) for outcome in _outcomes(self)},
                "reasons": {k: dict(v) for k, v in self.confirm_reasons.items()},
            },
            "list_cache": {
                "hits": self.list_cache_hits,
                "misses": self.list_cache_misses,
                "hit_ratio": (self.list_cache_hits / lookups) if lookups else None,
            },
            "stores": [dict(store) for store in self._stores],
            "audit": {"dropped": self.audit_dropped},
        }


def _outcomes(recorder: MetricsRecorder) -> list[str]:
    extra = [name for name in recorder.confirm if name not in CONFIRM_OUTCOMES]
    return [*CONFIRM_OUTCOMES, *sorted(extra)]
