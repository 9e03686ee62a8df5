"""Bench report pieces: latency summary, queue-wait section, CSV, text, options."""

from __future__ import annotations

import copy
import csv
import io
from typing import Any

import pytest

from secretivex.bench.report import (
    latency_summary,
    queue_wait_section,
    render_csv,
    render_text,
    validate_report,
)
from secretivex.bench.runner import BenchOptions, parse_flags, select_identity
from secretivex.client import AgentIdentity
from secretivex.metrics import Guardrail, MetricsRecorder

_SAMPLE: dict[str, Any] = {
    "meta": {
        "schema_version": 1,
        "tool": "secretivex bench",
        "versions": {"secretivex": "0.1.0", "python": "3.11.7", "implementation": "CPython"},
        "host": {"hostname": "vm", "cpus": 2, "platform": "Linux", "machine": "x86_64", "pid": 1},
        "started_unix_ms": 1_795_547_863_466,
        "measure_started_unix_ms": 1_795_547_863_570,
        "finished_unix_ms": 1_795_547_863_575,
        "label": None,
    },
    "run": {
        "workload": "sign",
        "socket": "/tmp/agent.sock",
        "mode": "requests",
        "concurrency": 2,
        "requests_per_worker": 5,
        "duration_ms": None,
        "warmup_per_worker": 1,
        "reconnect": False,
        "connect_retry": False,
        "processes": 1,
        "connect_timeout_ms": 5000,
        "response_timeout_ms": 10000,
        "worker_start_spread_ms": 0,
        "payload_size": 128,
        "flags": 0,
        "key": {
            "fingerprint": "SHA256:ebU//gDCvmDWgvBKBzEodmevVHeannBNmL+61Jgp8bY",
            "type": "ssh-ed25519",
            "comment": "ed-key",
        },
    },
    "results": {
        "attempted": 10,
        "ok": 9,
        "failed": 1,
        "failures": {
            "request_failures": 1,
            "request_timeouts": 0,
            "connect_failures": 0,
            "connect_eagain": 0,
            "worker_failures": 0,
        },
        "failure_detail": {"agent_failure": 1, "io_error": 0, "protocol_error": 0},
        "worker_errors": [],
        "success_rate": 0.9,
        "failure_rate": 0.1,
        "elapsed_ms": 2.448,
        "rps": 3676.5,
        "attempted_rps": 4085.3,
    },
    "latency_us": {
        "samples": 9,
        "sampled": False,
        "min": 167.7,
        "avg": 437.2,
        "max": 1234.0,
        "p50": 207.2,
        "p90": 1155.0,
        "p95": 1234.0,
        "p99": 1234.0,
    },
    "generator": {
        "processes": 1,
        "cpu_user_s": 0.0,
        "cpu_system_s": 0.0,
        "cpu_s": 0.0,
        "cpu_percent": 18.5,
        "host_cpus": 2,
    },
    "queue_wait": None,
}


def sample_report(**changes: Any) -> dict[str, Any]:
    """A valid report; ``section__field=value`` overrides one field."""
    report = copy.deepcopy(_SAMPLE)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            report[section][name] = value
        else:
            report[section] = value
    return report


def test_sample_is_valid() -> None:
    assert validate_report(sample_report()) == []


def test_latency_summary_is_exact_on_samples() -> None:
    samples = sorted(range(1_000, 101_000, 1_000))  # 1..100 us
    summary = latency_summary(samples, len(samples), sum(samples), samples[0], samples[-1])
    assert summary["p50"] == 50.0
    assert summary["p95"] == 95.0
    assert summary["p99"] == 99.0
    assert summary["max"] == 100.0 and summary["min"] == 1.0
    assert summary["avg"] == 50.5
    assert summary["sampled"] is False


def test_latency_summary_without_samples() -> None:
    summary = latency_summary([], 0, 0, 0, 0)
    assert summary["samples"] == 0
    assert all(summary[k] is None for k in ("p50", "p99", "max", "avg", "min"))


def test_latency_summary_marks_reservoir_sampling() -> None:
    assert latency_summary([5_000], 10, 50_000, 1_000, 9_000)["sampled"] is True


def _snapshot(waits: list[int], captured: int, started: int = 1) -> dict[str, Any]:
    rec = MetricsRecorder(clock_ms=lambda: started)
    for ns in waits:
        rec.on_queue_wait(ns)
    rec._clock_ms = lambda: captured
    return rec.snapshot()


def test_queue_wait_delta_between_snapshots() -> None:
    before = _snapshot([1_000] * 10, captured=100)
    after = copy.deepcopy(before)
    rec = MetricsRecorder(clock_ms=lambda: 1)
    for ns in [1_000] * 10 + [20_000_000] * 5:
        rec.on_queue_wait(ns)
    after["queue_wait"] = rec.snapshot()["queue_wait"]
    after["meta"]["captured_unix_ms"] = 2_000
    section = queue_wait_section("m.json", before, after, 1_500, Guardrail(10_000_000, 0.5))
    assert section["window"] == "delta"
    assert section["count"] == 5
    assert section["fresh"] is True and section["age_ms"] == 0
    assert section["percentiles_ns"]["p50"] > 10_000_000
    assert section["guardrail"]["ok"] is False
    assert section["guardrail"]["observed_ratio"] == 1.0


def test_queue_wait_falls_back_to_cumulative_after_a_reset() -> None:
    before = _snapshot([1_000] * 10, captured=100)
    after = _snapshot([1_000] * 3, captured=2_000)
    after["meta"]["reset_unix_ms"] = 1_900
    section = queue_wait_section("m.json", before, after, 1_500, None)
    assert section["window"] == "cumulative" and section["count"] == 3
    assert section["guardrail"] is None


def test_queue_wait_stale_snapshot_is_flagged() -> None:
    after = _snapshot([0], captured=1_000)
    section = queue_wait_section("m.json", None, after, 5_000, None)
    assert section["available"] is True
    assert section["fresh"] is False and section["age_ms"] == 4_000
    assert "stale" in section["problem"]
    assert section["max_ns"] == 0 and section["percentiles_ns"]["p99"] == 0


def test_queue_wait_missing_snapshot() -> None:
    section = queue_wait_section("m.json", None, None, 5_000, Guardrail(1, 0.1), "no such file")
    assert section["available"] is False and section["problem"] == "no such file"
    assert section["guardrail"]["ok"] is None
    assert validate_report(sample_report(queue_wait=section)) == []


def test_queue_wait_malformed_snapshot() -> None:
    section = queue_wait_section(
        "m.json", None, {"queue_wait": {"buckets": [{"x": 1}]}}, 5_000, None
    )
    assert section["available"] is False and "malformed" in section["problem"]


def test_csv_has_one_header_and_one_row() -> None:
    text = render_csv(sample_report())
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 2
    header, row = rows
    record = dict(zip(header, row, strict=True))
    assert record["results.attempted"] == "10"
    assert record["latency_us.p95"] == "1234.0"
    assert record["run.key.fingerprint"].startswith("SHA256:")
    assert record["meta.label"] == ""
    no_header = render_csv(sample_report(), header=False)
    assert len(list(csv.reader(io.StringIO(no_header)))) == 1


def test_text_summary_mentions_the_essentials() -> None:
    text = render_text(sample_report())
    assert "attempted 10" in text and "ok 9" in text
    assert "rps 3,676.5" in text
    assert "p95 1,234.0" in text


def test_text_warns_when_the_generator_is_saturated() -> None:
    generator = dict(_SAMPLE["generator"], cpu_percent=97.0)
    assert "raise --processes" in render_text(sample_report(generator=generator))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (None, 0),
        ("ssh-rsa", 0),
        ("rsa-sha2-256", 2),
        ("SHA256", 2),
        ("rsa-sha2-512", 4),
        ("sha512", 4),
        ("6", 6),
        ("0x4", 4),
    ],
)
def test_parse_flags(text: str | None, value: int) -> None:
    assert parse_flags(text) == value


@pytest.mark.parametrize("text", ["sha3", "-1", str(2**32)])
def test_parse_flags_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_flags(text)


def test_duration_mode_defaults_to_no_warmup() -> None:
    assert BenchOptions(socket="s", duration_ms=1000).effective_warmup == 0
    assert BenchOptions(socket="s", duration_ms=1000, warmup=3).effective_warmup == 3
    assert BenchOptions(socket="s").effective_warmup == 1
    assert BenchOptions(socket="s").effective_requests == 100
    assert BenchOptions(socket="s", duration_ms=10).effective_requests is None


@pytest.mark.parametrize(
    "changes",
    [
        {"requests": 1, "duration_ms": 1},
        {"concurrency": 0},
        {"requests": 0},
        {"processes": 0},
        {"payload_size": -1},
        {"warmup": -1},
        {"response_timeout_ms": -5},
        {"worker_start_spread_ms": -1},
    ],
)
def test_options_check_rejects(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BenchOptions(socket="s", **changes).check()


def _ids() -> list[AgentIdentity]:
    def blob(kind: bytes, body: bytes) -> bytes:
        return len(kind).to_bytes(4, "big") + kind + len(body).to_bytes(4, "big") + body

    return [
        AgentIdentity(blob(b"ssh-ed25519", b"a" * 32), "alice@laptop"),
        AgentIdentity(blob(b"ssh-ed25519", b"b" * 32), "ci-deploy"),
        AgentIdentity(blob(b"ecdsa-sha2-nistp256", b"c" * 65), "ci-ecdsa"),
    ]


def test_select_identity() -> None:
    ids = _ids()
    assert select_identity(ids, None) is ids[0]
    assert select_identity(ids, "ci-deploy") is ids[1]
    assert select_identity(ids, "ci-*") is ids[1]
    assert select_identity(ids, "comment:ci-e*") is ids[2]
    assert select_identity(ids, "type:ecdsa-sha2-nistp256") is ids[2]
    assert select_identity(ids, ids[2].fingerprint) is ids[2]
    from secretivex.bench.runner import BenchError

    with pytest.raises(BenchError, match="no identity"):
        select_identity(ids, "nobody")
    with pytest.raises(BenchError, match="holds no identities"):
        select_identity([], None)
    with pytest.raises(BenchError):
        select_identity(ids, "SHA256:short")
