"""MetricsRecorder: counters, gauges, reset semantics, snapshot contents."""

from __future__ import annotations

import jsonschema
import pytest

from secretivex.metrics import SCHEMA_VERSION, MetricsRecorder, snapshot_schema
from secretivex.stores.base import StoreHealth, StoreState


class Clock:
    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def populated(clock: Clock | None = None) -> MetricsRecorder:
    rec = MetricsRecorder("fanout", clock_ms=clock or Clock(), cpus=8)
    rec.on_connection_open()
    rec.on_connection_open()
    rec.on_connection_open()
    rec.on_connection_close()
    rec.on_connection_rejected("max_connections")
    rec.on_connection_rejected("peer_denied")
    rec.on_connection_rejected("peer_denied")
    rec.on_request("sign", "ok", 120_000)
    rec.on_request("sign", "ok", 80_000)
    rec.on_request("sign", "denied", 5_000)
    rec.on_request("list", "ok", 9_000)
    rec.on_queue_wait(0)
    rec.on_queue_wait(3_000_000)
    rec.on_sign("file")
    rec.on_sign("file")
    rec.on_sign("pkcs11")
    rec.on_confirm("allow")
    rec.on_confirm("deny", "exit 1")
    rec.on_confirm("deny", "exit 1")
    rec.on_confirm("timeout", "no answer in 30000 ms")
    rec.on_confirm("cache_hit")
    rec.on_list_cache(True)
    rec.on_list_cache(True)
    rec.on_list_cache(False)
    rec.set_store_health(
        [
            StoreHealth("file", "file", StoreState.OK, 2),
            StoreHealth("token", "pkcs11", StoreState.DEGRADED, 0, last_error="token removed"),
        ]
    )
    return rec


def test_snapshot_counts_everything() -> None:
    snap = populated().snapshot("periodic")
    assert snap["meta"]["schema_version"] == SCHEMA_VERSION
    assert snap["meta"]["kind"] == "periodic"
    assert snap["meta"]["profile"] == "fanout"
    conns = snap["connections"]
    assert conns == {
        "opened": 3,
        "closed": 1,
        "active": 2,
        "max_active": 3,
        "rejected_total": 3,
        "rejected": {"max_connections": 1, "peer_denied": 2},
    }
    sign = snap["requests"]["by_kind"]["sign"]
    assert sign["count"] == 3
    assert sign["outcomes"] == {"ok": 2, "denied": 1}
    assert sign["latency_sum_ns"] == 205_000 and sign["latency_max_ns"] == 120_000
    assert snap["requests"]["total"] == 4
    assert snap["requests"]["latency"]["count"] == 4
    qw = snap["queue_wait"]
    assert qw["count"] == 2 and qw["sum_ns"] == 3_000_000 and qw["max_ns"] == 3_000_000
    assert qw["suggested"]["profile"] == "fanout"
    assert qw["suggested"]["tail_ns"] == 6_000_000  # 8 CPUs: no scaling
    assert snap["signs"] == {"total": 3, "by_store": {"file": 2, "pkcs11": 1}}
    assert snap["confirm"]["total"] == 5
    assert snap["confirm"]["outcomes"] == {
        "allow": 1,
        "deny": 2,
        "timeout": 1,
        "error": 0,
        "cache_hit": 1,
    }
    assert snap["confirm"]["reasons"] == {
        "deny": {"exit 1": 2},
        "timeout": {"no answer in 30000 ms": 1},
    }
    assert snap["list_cache"] == {"hits": 2, "misses": 1, "hit_ratio": pytest.approx(2 / 3)}
    assert snap["stores"][1]["state"] == "degraded"
    assert snap["stores"][1]["last_error"] == "token removed"


def test_snapshot_matches_the_shipped_schema() -> None:
    validator = jsonschema.Draft202012Validator(snapshot_schema())
    for kind in ("interval", "periodic", "snapshot", "reset"):
        validator.validate(populated().snapshot(kind))
    validator.validate(MetricsRecorder().snapshot())  # empty recorder too


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown snapshot kind"):
        MetricsRecorder().snapshot("hourly")


def test_reset_zeroes_counters_but_keeps_gauges() -> None:
    clock = Clock()
    rec = populated(clock)
    clock.now += 5_000
    rec.reset()
    clock.now += 1_000
    snap = rec.snapshot("reset")
    assert snap["meta"]["reset_unix_ms"] == clock.now - 1_000
    assert snap["meta"]["started_unix_ms"] == clock.now - 6_000
    assert snap["meta"]["window_ms"] == 1_000
    assert snap["meta"]["uptime_ms"] == 6_000
    assert snap["connections"]["active"] == 2  # gauge survives
    assert snap["connections"]["max_active"] == 2  # restarts from the current level
    assert snap["connections"]["opened"] == 0
    assert snap["requests"] == {
        "total": 0,
        "by_kind": {},
        "latency": snap["requests"]["latency"],
    }
    assert snap["requests"]["latency"]["count"] == 0
    assert snap["queue_wait"]["count"] == 0
    assert snap["signs"]["total"] == 0
    assert snap["confirm"]["total"] == 0
    assert snap["list_cache"]["hit_ratio"] is None
    assert len(snap["stores"]) == 2  # health is state, not a counter


def test_connection_close_never_goes_negative() -> None:
    rec = MetricsRecorder()
    rec.on_connection_close()
    assert rec.snapshot()["connections"]["active"] == 0


def test_negative_latency_counts_as_zero() -> None:
    rec = MetricsRecorder()
    rec.on_request("sign", "ok", -5)
    rec.on_queue_wait(-5)
    snap = rec.snapshot()
    assert snap["requests"]["by_kind"]["sign"]["latency_sum_ns"] == 0
    assert snap["queue_wait"]["sum_ns"] == 0


def test_unknown_profile_still_gets_a_suggestion() -> None:
    snap = MetricsRecorder("custom", cpus=4).snapshot()
    assert snap["queue_wait"]["suggested"]["profile"] == "custom"
    assert snap["queue_wait"]["suggested"]["tail_ns"] == 8_000_000


def test_snapshot_is_a_copy() -> None:
    rec = populated()
    snap = rec.snapshot()
    snap["signs"]["by_store"]["file"] = 999
    snap["stores"][0]["keys"] = 999
    again = rec.snapshot()
    assert again["signs"]["by_store"]["file"] == 2
    assert again["stores"][0]["keys"] == 2


def test_request_write_records_the_kind_and_resets() -> None:
    rec = populated()
    woken = []
    rec._wake = lambda: woken.append(True)
    rec.request_write("snapshot")
    assert rec._pending_kind == "snapshot" and woken == [True]
    rec.request_write("reset")
    assert rec._pending_kind == "reset"
    assert rec.snapshot()["signs"]["total"] == 0
