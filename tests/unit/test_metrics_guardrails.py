"""Queue-wait guardrails: suggestions, evaluation, freshness."""

from __future__ import annotations

import pytest

from secretivex.metrics import (
    Guardrail,
    MetricsRecorder,
    check_freshness,
    evaluate_queue_wait,
    guardrail_for_profile,
    suggest_queue_wait,
)
from secretivex.metrics.guardrails import GUARDRAIL_BASE

NOW = 1_700_000_000_000


def snapshot_with(waits: list[int], captured: int = NOW) -> dict[str, object]:
    rec = MetricsRecorder(clock_ms=lambda: captured)
    for ns in waits:
        rec.on_queue_wait(ns)
    return rec.snapshot()


@pytest.mark.parametrize("profile", sorted(GUARDRAIL_BASE))
def test_suggestions_scale_with_small_machines(profile: str) -> None:
    base_ns, ratio = GUARDRAIL_BASE[profile]
    big = suggest_queue_wait(profile, cpus=16)
    assert big["tail_ns"] == base_ns and big["tail_max_ratio"] == ratio
    small = suggest_queue_wait(profile, cpus=2)
    assert small["tail_ns"] == 2 * base_ns
    assert small["env"]["SLO_QUEUE_WAIT_TAIL_NS"] == str(2 * base_ns)
    assert "scaled" in small["rationale"]


def test_fanout_profiles_tolerate_less_tail() -> None:
    tails = [suggest_queue_wait(p, cpus=8)["tail_ns"] for p in ("pssh", "fanout", "balanced")]
    assert tails == sorted(tails)


def test_unknown_profile_raises() -> None:
    with pytest.raises(KeyError):
        suggest_queue_wait("turbo")


def test_guardrail_passes_and_fails_on_the_tail() -> None:
    snap = snapshot_with([1_000] * 95 + [50_000_000] * 5)
    ok = evaluate_queue_wait(snap, Guardrail(tail_ns=10_000_000, max_ratio=0.05))
    assert ok.ok and ok.method == "histogram"
    assert ok.observed_ratio == pytest.approx(0.05)
    bad = evaluate_queue_wait(snap, Guardrail(tail_ns=10_000_000, max_ratio=0.04))
    assert not bad.ok
    assert "5.00% of requests waited longer" in bad.problems[0]


def test_no_waits_trivially_pass() -> None:
    result = evaluate_queue_wait(snapshot_with([]), Guardrail(1, 0.0))
    assert result.ok and result.method == "no-samples" and result.observed_ratio == 0.0


def test_stale_snapshot_fails_even_without_a_guardrail() -> None:
    snap = snapshot_with([1_000], captured=NOW - 10_000)
    result = evaluate_queue_wait(snap, None, max_age_ms=5_000, now_ms=NOW)
    assert not result.ok and result.stale and result.age_ms == 10_000
    assert "stale" in result.problems[0]
    fresh = evaluate_queue_wait(snap, None, max_age_ms=20_000, now_ms=NOW)
    assert fresh.ok and not fresh.stale


def test_snapshot_without_capture_time_is_never_fresh() -> None:
    fresh, age, problem = check_freshness({"meta": {}}, 1_000_000, NOW)
    assert not fresh and age is None and problem and "captured_unix_ms" in problem
    fresh, age, _ = check_freshness({"captured_unix_ms": NOW - 5}, 10, NOW)
    assert fresh and age == 5  # top-level field accepted too


def test_missing_queue_wait_fails_a_guardrail() -> None:
    result = evaluate_queue_wait({"meta": {"captured_unix_ms": NOW}}, Guardrail(1, 0.1))
    assert not result.ok and "no queue_wait" in result.problems[0]


def test_malformed_buckets_fail() -> None:
    snap = {"queue_wait": {"buckets": [{"oops": 1}], "count": 1}}
    result = evaluate_queue_wait(snap, Guardrail(1, 0.1))
    assert not result.ok and "malformed" in result.problems[0]


def test_percentiles_fallback_when_buckets_are_missing() -> None:
    snap = {
        "queue_wait": {
            "count": 100,
            "percentiles_ns": {"p50": 10, "p90": 20, "p95": 30_000, "p99": 40_000},
        }
    }
    bad = evaluate_queue_wait(snap, Guardrail(tail_ns=25_000, max_ratio=0.05))
    assert not bad.ok and bad.method == "percentiles"
    good = evaluate_queue_wait(snap, Guardrail(tail_ns=25_000, max_ratio=0.10))
    assert good.ok
    quiet = evaluate_queue_wait(snap, Guardrail(tail_ns=50_000, max_ratio=0.0))
    assert quiet.ok and quiet.observed_ratio == 0.0


def test_guardrail_for_profile_names_its_source() -> None:
    guardrail = guardrail_for_profile("pssh", cpus=4)
    assert guardrail == Guardrail(4_000_000, 0.03, "profile:pssh")
    assert evaluate_queue_wait(snapshot_with([1]), guardrail).as_dict()["source"] == "profile:pssh"


def test_format_suggestion_modes() -> None:
    import json

    from secretivex.metrics.guardrails import format_suggestion

    suggestion = suggest_queue_wait("fanout", cpus=2)
    quiet = format_suggestion(suggestion, "quiet").splitlines()
    assert quiet == ["profile=fanout", "cpus=2", "tail_ns=12000000", "tail_max_ratio=0.04"]
    assert json.loads(format_suggestion(suggestion, "json"))["tail_ns"] == 12_000_000
    text = format_suggestion(suggestion)
    assert "export SLO_QUEUE_WAIT_TAIL_NS=12000000" in text
    with pytest.raises(ValueError):
        format_suggestion(suggestion, "yaml")
