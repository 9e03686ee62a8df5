"""Prometheus text exposition, checked with prometheus_client's own parser."""

from __future__ import annotations

import pytest

from secretivex.metrics import MetricsRecorder, render_prometheus
from secretivex.stores.base import StoreHealth, StoreState

parser = pytest.importorskip("prometheus_client.parser")


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def recorder() -> MetricsRecorder:
    rec = MetricsRecorder("pssh", cpus=8)
    rec.on_connection_open()
    rec.on_connection_rejected('weird "reason"\nwith newline\\')
    for ns in (0, 100, 1_000, 50_000, 2_000_000, 100_000_000_000):
        rec.on_queue_wait(ns)
    rec.on_request("sign", "ok", 100_000)
    rec.on_request("list", "ok", 10_000)
    rec.on_sign("file")
    rec.on_confirm("deny", "user said no")
    rec.on_list_cache(False)
    rec.set_store_health([StoreHealth("tok", "pkcs11", StoreState.DEGRADED, 1)])
    return rec


def test_text_parses_and_has_help_and_type() -> None:
    text = render_prometheus(recorder().snapshot())
    assert text.endswith("\n")
    found = families(text)
    for name in (
        "secretivex_info",
        "secretivex_connections_opened",
        "secretivex_connections_active",
        "secretivex_connections_rejected",
        "secretivex_requests",
        "secretivex_request_duration_seconds",
        "secretivex_queue_wait_seconds",
        "secretivex_signs",
        "secretivex_confirm",
        "secretivex_confirm_reasons",
        "secretivex_list_cache",
        "secretivex_store_state",
        "secretivex_store_keys",
    ):
        assert name in found, name
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4  # a real help text
    assert found["secretivex_queue_wait_seconds"].type == "histogram"  # type: ignore[attr-defined]
    assert found["secretivex_requests"].type == "counter"  # type: ignore[attr-defined]
    assert found["secretivex_connections_active"].type == "gauge"  # type: ignore[attr-defined]


def test_histogram_buckets_are_cumulative_and_end_at_count() -> None:
    found = families(render_prometheus(recorder().snapshot()))
    hist = found["secretivex_queue_wait_seconds"]
    buckets = [
        (s.labels["le"], s.value)
        for s in hist.samples  # type: ignore[attr-defined]
        if s.name.endswith("_bucket")
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1][0] == "+Inf" and buckets[-1][1] == 6
    bounds = [float(le) for le, _ in buckets[:-1]]
    assert bounds == sorted(bounds) and bounds[0] == pytest.approx(256e-9)
    by_le = dict(buckets)
    # 0, 100, 1000 ns are <= 1024 ns; 100 s exceeds every finite bound.
    assert by_le[repr(1024 / 1e9)] == 3
    assert buckets[-2][1] == 5
    samples = {s.name: s.value for s in hist.samples}  # type: ignore[attr-defined]
    assert samples["secretivex_queue_wait_seconds_count"] == 6
    assert samples["secretivex_queue_wait_seconds_sum"] == pytest.approx(100.002051100)


def test_labels_are_escaped() -> None:
    found = families(render_prometheus(recorder().snapshot()))
    rejected = found["secretivex_connections_rejected"]
    (sample,) = rejected.samples  # type: ignore[attr-defined]
    assert sample.labels["reason"] == 'weird "reason"\nwith newline\\'


def test_store_state_is_one_hot() -> None:
    found = families(render_prometheus(recorder().snapshot()))
    states = {
        s.labels["state"]: s.value
        for s in found["secretivex_store_state"].samples  # type: ignore[attr-defined]
    }
    assert states == {"ok": 0, "degraded": 1, "stopped": 0}


def test_empty_snapshot_renders() -> None:
    found = families(render_prometheus(MetricsRecorder().snapshot()))
    hist = found["secretivex_queue_wait_seconds"]
    counts = {s.name: s.value for s in hist.samples}  # type: ignore[attr-defined]
    assert counts["secretivex_queue_wait_seconds_count"] == 0
