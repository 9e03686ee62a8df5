"""Gate verdicts on bench reports: SLO envelopes, failure-budget trend, agent comparison.

The ``ci/gate-*.sh`` scripts run the bench and hand its report to these checks (through
``secretivex bench check|trend|compare``), so every verdict is computed in one tested
place and the shell only orchestrates.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secretivex.metrics.guardrails import Guardrail
from secretivex.metrics.histogram import tail_ratio_from_buckets

__all__ = [
    "Check",
    "Envelope",
    "Verdict",
    "compare_runs",
    "evaluate_envelope",
    "evaluate_trend",
    "load_compare_dir",
    "render_compare_markdown",
]


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


@dataclass(slots=True)
class Verdict:
    checks: list[Check] = field(default_factory=list)
    diagnosis: str | None = None

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "diagnosis": self.diagnosis,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


@dataclass(slots=True)
class Envelope:
    """SLO thresholds; ``None`` skips a check."""

    min_attempted: int = 1
    min_rps: float | None = None
    max_p95_us: float | None = None
    max_p99_us: float | None = None
    max_failure_rate: float | None = None
    max_worker_failures: int | None = 0
    require_queue_wait: bool = False
    require_fresh_metrics: bool = False
    queue_wait_guardrail: Guardrail | None = None
    max_queue_wait_avg_ns: int | None = None
    max_queue_wait_p99_ns: int | None = None


def _get(report: Mapping[str, Any], *path: str) -> Any:
    node: Any = report
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _attempted_zero_diagnosis(report: Mapping[str, Any]) -> str:
    run = report.get("run") or {}
    failures = _get(report, "results", "failures") or {}
    hints = []
    if run.get("mode") == "duration" and not run.get("duration_ms"):
        hints.append("the duration is 0")
    if run.get("warmup_per_worker"):
        hints.append(f"warmup is {run.get('warmup_per_worker')} per worker (try --warmup 0)")
    if failures.get("worker_failures"):
        hints.append(f"{failures['worker_failures']} workers failed (see results.worker_errors)")
    spread = run.get("worker_start_spread_ms") or 0
    if run.get("duration_ms") is not None and spread >= (run.get("duration_ms") or 0) > 0:
        hints.append("--worker-start-spread-ms is not shorter than the duration")
    hint = "; ".join(hints) if hints else "check the socket, the agent log and the bench options"
    return (
        "attempted=0: the bench attempted no request at all. This is a setup, warmup or "
        f"configuration problem, not a throughput result ({hint})."
    )


def evaluate_envelope(report: Mapping[str, Any], env: Envelope) -> Verdict:
    """Check a report against an envelope. ``attempted=0`` is reported first, alone."""
    verdict = Verdict()
    attempted = int(_get(report, "results", "attempted") or 0)
    if attempted < max(env.min_attempted, 1):
        if attempted == 0:
            verdict.diagnosis = _attempted_zero_diagnosis(report)
        verdict.checks.append(
            Check(
                "attempted", False, f"attempted={attempted} (need >= {max(env.min_attempted, 1)})"
            )
        )
        return verdict
    verdict.checks.append(Check("attempted", True, f"attempted={attempted}"))

    worker_failures = int(_get(report, "results", "failures", "worker_failures") or 0)
    if env.max_worker_failures is not None:
        verdict.checks.append(
            Check(
                "worker_failures",
                worker_failures <= env.max_worker_failures,
                f"{worker_failures} (max {env.max_worker_failures})",
            )
        )
    if env.max_failure_rate is not None:
        rate = _get(report, "results", "failure_rate")
        rate = 1.0 if rate is None else float(rate)
        failures = _get(report, "results", "failures") or {}
        verdict.checks.append(
            Check(
                "failure_rate",
                rate <= env.max_failure_rate,
                f"{rate:.4%} (max {env.max_failure_rate:.4%}; "
                + ", ".join(f"{k}={v}" for k, v in failures.items())
                + ")",
            )
        )
    if env.min_rps is not None:
        rps = float(_get(report, "results", "rps") or 0.0)
        verdict.checks.append(
            Check("rps", rps >= env.min_rps, f"{rps:,.1f} (min {env.min_rps:,.1f})")
        )
    for label, limit in (("p95", env.max_p95_us), ("p99", env.max_p99_us)):
        if limit is None:
            continue
        value = _get(report, "latency_us", label)
        if value is None:
            verdict.checks.append(Check(f"latency_{label}", False, "no latency samples"))
        else:
            verdict.checks.append(
                Check(
                    f"latency_{label}",
                    float(value) <= limit,
                    f"{float(value):,.1f} us (max {limit:,.1f} us)",
                )
            )
    _queue_wait_checks(report, env, verdict)
    return verdict


def _queue_wait_checks(report: Mapping[str, Any], env: Envelope, verdict: Verdict) -> None:
    wants = (
        env.require_queue_wait
        or env.require_fresh_metrics
        or env.queue_wait_guardrail is not None
        or env.max_queue_wait_avg_ns is not None
        or env.max_queue_wait_p99_ns is not None
    )
    if not wants:
        return
    qw = report.get("queue_wait")
    if not isinstance(qw, Mapping) or not qw.get("available"):
        problem = qw.get("problem") if isinstance(qw, Mapping) else None
        verdict.checks.append(
            Check(
                "queue_wait",
                False,
                "no agent queue-wait data"
                + (f" ({problem})" if problem else " (run the bench with --metrics-file)"),
            )
        )
        return
    verdict.checks.append(
        Check("queue_wait", True, f"{qw.get('count')} samples ({qw.get('window')})")
    )
    if env.require_fresh_metrics:
        verdict.checks.append(
            Check(
                "metrics_fresh",
                bool(qw.get("fresh")),
                "snapshot captured after the run"
                if qw.get("fresh")
                else (qw.get("problem") or f"snapshot is {qw.get('age_ms')} ms old"),
            )
        )
    count = int(qw.get("count") or 0)
    if env.max_queue_wait_avg_ns is not None:
        avg = qw.get("avg_ns")
        value = 0 if avg is None else int(avg)
        verdict.checks.append(
            Check(
                "queue_wait_avg",
                value <= env.max_queue_wait_avg_ns,
                f"{value} ns (max {env.max_queue_wait_avg_ns} ns)",
            )
        )
    if env.max_queue_wait_p99_ns is not None:
        p99 = (qw.get("percentiles_ns") or {}).get("p99")
        value = 0 if p99 is None else int(p99)
        verdict.checks.append(
            Check(
                "queue_wait_p99",
                value <= env.max_queue_wait_p99_ns,
                f"{value} ns (max {env.max_queue_wait_p99_ns} ns)",
            )
        )
    guardrail = env.queue_wait_guardrail
    if guardrail is not None:
        ratio = (
            tail_ratio_from_buckets(qw.get("buckets") or [], guardrail.tail_ns) if count else 0.0
        )
        ratio = ratio or 0.0
        verdict.checks.append(
            Check(
                "queue_wait_tail",
                ratio <= guardrail.max_ratio,
                f"{ratio:.2%} waited > {guardrail.tail_ns} ns "
                f"(max {guardrail.max_ratio:.2%}, {guardrail.source})",
            )
        )


# -- failure-budget trend -------------------------------------------------------------


def evaluate_trend(
    current: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    budget: float,
    max_increase: float,
) -> Verdict:
    """Failure rate vs a budget, and vs the previous report's rate when there is one."""
    verdict = Verdict()
    attempted = int(_get(current, "results", "attempted") or 0)
    if attempted == 0:
        verdict.diagnosis = _attempted_zero_diagnosis(current)
        verdict.checks.append(Check("attempted", False, "attempted=0"))
        return verdict
    rate = float(_get(current, "results", "failure_rate") or 0.0)
    used = rate / budget if budget > 0 else (0.0 if rate == 0 else float("inf"))
    verdict.checks.append(
        Check(
            "failure_budget",
            rate <= budget,
            f"failure rate {rate:.4%} of budget {budget:.4%} ({used:.0%} used)",
        )
    )
    if previous is None:
        verdict.checks.append(Check("trend", True, "no previous report: nothing to compare"))
        return verdict
    prev_attempted = int(_get(previous, "results", "attempted") or 0)
    if prev_attempted == 0:
        verdict.checks.append(Check("trend", True, "previous report attempted nothing"))
        return verdict
    prev_rate = float(_get(previous, "results", "failure_rate") or 0.0)
    delta = rate - prev_rate
    verdict.checks.append(
        Check(
            "trend",
            delta <= max_increase,
            f"{prev_rate:.4%} -> {rate:.4%} ({delta:+.4%}; max increase {max_increase:.4%})",
        )
    )
    return verdict


# -- comparing agents -----------------------------------------------------------------


def load_compare_dir(directory: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``scenario -> agent -> [reports]`` from files named ``<scenario>__<agent>__<n>.json``."""
    import json

    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(directory.glob("*__*__*.json")):
        scenario, agent, _ = path.stem.split("__", 2)
        out.setdefault(scenario, {}).setdefault(agent, []).append(json.loads(path.read_text()))
    return out


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def compare_runs(
    runs: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    baseline: str,
    candidate: str,
    targets: Mapping[str, float] | None = None,
    p99_targets: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per scenario: median rps and p99 of each agent, and their ratios.

    ``targets``: minimum rps ratio per scenario; ``p99_targets``: maximum p99 ratio.
    ``meets_target`` is None when neither applies to a scenario.
    """

    def first_start(agents: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
        starts = [
            int(_get(r, "meta", "started_unix_ms") or 0)
            for reports in agents.values()
            for r in reports
        ]
        return min(starts) if starts else 0

    rows = []
    # Scenarios in the order they were run.
    for scenario, agents in sorted(runs.items(), key=lambda item: first_start(item[1])):
        base = agents.get(baseline, [])
        cand = agents.get(candidate, [])

        def med(reports: Sequence[Mapping[str, Any]], *path: str) -> float | None:
            values = [float(v) for r in reports if (v := _get(r, *path)) is not None]
            return _median(values)

        def failed(reports: Sequence[Mapping[str, Any]]) -> int:
            return sum(int(_get(r, "results", "failed") or 0) for r in reports)

        def eagain(reports: Sequence[Mapping[str, Any]]) -> int:
            return sum(int(_get(r, "results", "failures", "connect_eagain") or 0) for r in reports)

        # Per-round ratios (reports pair up by round: the files sort by round number).
        round_ratios = sorted(
            round(float(c) / float(b), 3)
            for rb, rc in zip(base, cand, strict=False)
            if (b := _get(rb, "results", "rps")) and (c := _get(rc, "results", "rps")) is not None
        )

        b_rps, c_rps = med(base, "results", "rps"), med(cand, "results", "rps")
        b_p99, c_p99 = med(base, "latency_us", "p99"), med(cand, "latency_us", "p99")
        rps_ratio = (c_rps / b_rps) if b_rps and c_rps is not None else None
        p99_ratio = (c_p99 / b_p99) if b_p99 and c_p99 is not None else None
        target = (targets or {}).get(scenario)
        p99_target = (p99_targets or {}).get(scenario)
        verdicts = []
        if target:
            verdicts.append(rps_ratio is not None and rps_ratio >= target)
        if p99_target:
            verdicts.append(p99_ratio is not None and p99_ratio <= p99_target)
        row: dict[str, Any] = {
            "scenario": scenario,
            "runs": min(len(base), len(cand)),
            f"{baseline}_rps": b_rps,
            f"{candidate}_rps": c_rps,
            "rps_ratio": round(rps_ratio, 3) if rps_ratio is not None else None,
            f"{baseline}_p99_us": b_p99,
            f"{candidate}_p99_us": c_p99,
            "p99_ratio": round(p99_ratio, 3) if p99_ratio is not None else None,
            "rps_ratio_min": round_ratios[0] if round_ratios else None,
            "rps_ratio_max": round_ratios[-1] if round_ratios else None,
            f"{baseline}_failed": failed(base),
            f"{candidate}_failed": failed(cand),
            f"{baseline}_connect_eagain": eagain(base),
            f"{candidate}_connect_eagain": eagain(cand),
            "target_rps_ratio": target,
            "target_p99_ratio": p99_target,
            "meets_target": all(verdicts) if verdicts else None,
            "generator_cpu_percent": med([*base, *cand], "generator", "cpu_percent"),
        }
        rows.append(row)
    return rows


def render_compare_markdown(
    rows: Sequence[Mapping[str, Any]], baseline: str, candidate: str
) -> str:
    def num(value: Any, digits: int = 0) -> str:
        if value is None:
            return "-"
        return f"{float(value):,.{digits}f}"

    header = (
        f"| scenario | runs | {baseline} rps | {candidate} rps | rps ratio (rounds) | target | "
        f"{baseline} p99 us | {candidate} p99 us | p99 ratio | failures ({baseline}/{candidate}) "
        "| of which connect EAGAIN |"
    )
    lines = [header, "|" + " --- |" * 11]
    for row in rows:
        parts = []
        if row.get("target_rps_ratio"):
            parts.append(f"rps >= {row['target_rps_ratio']:g}x")
        if row.get("target_p99_ratio"):
            parts.append(f"p99 <= {row['target_p99_ratio']:g}x")
        meets = row.get("meets_target")
        target_text = "-" if not parts else " and ".join(parts) + (" ok" if meets else " MISSED")
        spread = ""
        if row.get("rps_ratio_min") is not None and row["runs"] > 1:
            spread = f" ({num(row['rps_ratio_min'], 2)}-{num(row['rps_ratio_max'], 2)})"
        lines.append(
            f"| {row['scenario']} | {row['runs']} | {num(row[f'{baseline}_rps'])} | "
            f"{num(row[f'{candidate}_rps'])} | {num(row['rps_ratio'], 2)}x{spread} | "
            f"{target_text} | "
            f"{num(row[f'{baseline}_p99_us'])} | {num(row[f'{candidate}_p99_us'])} | "
            f"{num(row['p99_ratio'], 2)} | "
            f"{row[f'{baseline}_failed']}/{row[f'{candidate}_failed']} | "
            f"{row.get(f'{baseline}_connect_eagain', 0)}/"
            f"{row.get(f'{candidate}_connect_eagain', 0)} |"
        )
    return "\n".join(lines)
