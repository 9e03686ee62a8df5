"""Gate verdicts: SLO envelopes (attempted=0 first), trend, agent comparison."""

from __future__ import annotations

import json
from pathlib import Path

from test_bench_report import sample_report

from secretivex.bench.gates import (
    Envelope,
    compare_runs,
    evaluate_envelope,
    evaluate_trend,
    load_compare_dir,
    render_compare_markdown,
)
from secretivex.bench.report import queue_wait_section
from secretivex.metrics import Guardrail, MetricsRecorder


def names(verdict: object) -> dict[str, bool]:
    return {c.name: c.ok for c in verdict.checks}  # type: ignore[attr-defined]


def test_passing_envelope() -> None:
    verdict = evaluate_envelope(
        sample_report(),
        Envelope(min_rps=100, max_p95_us=5_000, max_p99_us=5_000, max_failure_rate=0.2),
    )
    assert verdict.ok
    assert names(verdict) == {
        "attempted": True,
        "worker_failures": True,
        "failure_rate": True,
        "rps": True,
        "latency_p95": True,
        "latency_p99": True,
    }


def test_each_threshold_can_fail() -> None:
    verdict = evaluate_envelope(
        sample_report(),
        Envelope(min_rps=1e6, max_p95_us=1, max_p99_us=1, max_failure_rate=0.01),
    )
    assert not verdict.ok
    assert names(verdict) == {
        "attempted": True,
        "worker_failures": True,
        "failure_rate": False,
        "rps": False,
        "latency_p95": False,
        "latency_p99": False,
    }
    line = next(c for c in verdict.checks if c.name == "failure_rate").line()
    assert line.startswith("FAIL failure_rate: 10.0000%") and "request_failures=1" in line


def test_attempted_zero_is_reported_first_and_alone() -> None:
    report = sample_report()
    report["results"].update(attempted=0, ok=0, failure_rate=None, success_rate=None, rps=0.0)
    report["run"].update(mode="duration", duration_ms=0, requests_per_worker=None)
    verdict = evaluate_envelope(report, Envelope(min_rps=1, max_p95_us=1, max_failure_rate=0))
    assert not verdict.ok
    assert [c.name for c in verdict.checks] == ["attempted"]
    assert verdict.diagnosis is not None
    assert verdict.diagnosis.startswith("attempted=0")
    assert "setup, warmup or configuration problem" in verdict.diagnosis
    assert "the duration is 0" in verdict.diagnosis
    assert "try --warmup 0" in verdict.diagnosis


def test_worker_failures_fail_by_default() -> None:
    report = sample_report()
    report["results"]["failures"]["worker_failures"] = 4
    assert names(evaluate_envelope(report, Envelope()))["worker_failures"] is False


def test_missing_latency_fails_a_latency_check() -> None:
    report = sample_report()
    report["latency_us"]["p95"] = None
    assert names(evaluate_envelope(report, Envelope(max_p95_us=10)))["latency_p95"] is False


def _with_queue_wait(fresh: bool, waits: list[int]) -> dict[str, object]:
    rec = MetricsRecorder(clock_ms=lambda: 2_000 if fresh else 10)
    for ns in waits:
        rec.on_queue_wait(ns)
    section = queue_wait_section("m.json", None, rec.snapshot(), 1_000, None)
    return sample_report(queue_wait=section)


def test_queue_wait_envelopes() -> None:
    report = _with_queue_wait(True, [1_000] * 90 + [30_000_000] * 10)
    verdict = evaluate_envelope(
        report,
        Envelope(
            require_queue_wait=True,
            require_fresh_metrics=True,
            queue_wait_guardrail=Guardrail(10_000_000, 0.05),
            max_queue_wait_avg_ns=10**9,
            max_queue_wait_p99_ns=10**9,
        ),
    )
    assert names(verdict) == {
        "attempted": True,
        "worker_failures": True,
        "queue_wait": True,
        "metrics_fresh": True,
        "queue_wait_avg": True,
        "queue_wait_p99": True,
        "queue_wait_tail": False,
    }


def test_stale_metrics_fail_when_freshness_is_required() -> None:
    report = _with_queue_wait(False, [1_000])
    verdict = evaluate_envelope(report, Envelope(require_fresh_metrics=True))
    assert names(verdict)["metrics_fresh"] is False


def test_required_queue_wait_missing() -> None:
    verdict = evaluate_envelope(sample_report(), Envelope(require_queue_wait=True))
    assert names(verdict)["queue_wait"] is False
    assert "--metrics-file" in verdict.checks[-1].detail


def test_trend() -> None:
    current = sample_report()  # 10 % failures
    previous = sample_report()
    previous["results"]["failure_rate"] = 0.08
    ok = evaluate_trend(current, previous, budget=0.2, max_increase=0.05)
    assert ok.ok
    bad = evaluate_trend(current, previous, budget=0.2, max_increase=0.01)
    assert names(bad) == {"failure_budget": True, "trend": False}
    over = evaluate_trend(current, None, budget=0.05, max_increase=0.01)
    assert names(over) == {"failure_budget": False, "trend": True}
    empty = sample_report()
    empty["results"]["attempted"] = 0
    assert evaluate_trend(empty, None, 1, 1).diagnosis is not None


def test_compare_table(tmp_path: Path) -> None:
    for agent, rps_values in (("openssh", [1000, 1100, 900]), ("secretivex", [5200, 5000, 5100])):
        for i, rps in enumerate(rps_values):
            report = sample_report()
            report["results"]["rps"] = rps
            report["latency_us"]["p99"] = 100_000 / rps
            (tmp_path / f"ed25519__{agent}__{i}.json").write_text(json.dumps(report))
    runs = load_compare_dir(tmp_path)
    (row,) = compare_runs(runs, "openssh", "secretivex", {"ed25519": 5}, {"ed25519": 0.2})
    assert row["runs"] == 3
    assert row["openssh_rps"] == 1000 and row["secretivex_rps"] == 5100
    assert row["rps_ratio"] == 5.1 and row["meets_target"] is True
    assert row["p99_ratio"] == round(1000 / 5100, 3)
    table = render_compare_markdown([row], "openssh", "secretivex")
    # Per-round ratios pair the n-th run of each agent: 5200/1000, 5000/1100, 5100/900.
    assert (row["rps_ratio_min"], row["rps_ratio_max"]) == (4.545, 5.667)
    assert (
        "| ed25519 | 3 | 1,000 | 5,100 | 5.10x (4.54-5.67) | rps >= 5x and p99 <= 0.2x ok |"
        in table
    )
    assert row["openssh_connect_eagain"] == 0 and table.rstrip().endswith("| 0/0 |")
    (missed,) = compare_runs(runs, "openssh", "secretivex", None, {"ed25519": 0.1})
    assert missed["meets_target"] is False
