"""Queue-wait tail guardrails: per-profile suggestions and their evaluation.

A guardrail is a pair ``(tail_ns, max_ratio)``: at most ``max_ratio`` of the requests
may wait longer than ``tail_ns`` for a signer slot. It is evaluated on the log2
histogram of a metrics snapshot (or, when a snapshot carries no buckets, on its
published percentiles). Snapshots older than an allowed age fail as *stale*: a
guardrail that passes on old data would hide a live problem.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from secretivex.metrics.histogram import tail_ratio_from_buckets

__all__ = [
    "GUARDRAIL_BASE",
    "Guardrail",
    "GuardrailResult",
    "check_freshness",
    "evaluate_queue_wait",
    "format_suggestion",
    "guardrail_for_profile",
    "snapshot_captured_ms",
    "suggest_queue_wait",
]


@dataclass(frozen=True, slots=True)
class Guardrail:
    """At most ``max_ratio`` of the requests may wait longer than ``tail_ns`` for a slot."""

    tail_ns: int
    max_ratio: float
    source: str = "explicit"  # "explicit" or "profile:<name>"


#: Profile -> (tail_ns, max_ratio) on a machine with at least ``_REFERENCE_CPUS`` CPUs.
#: Profiles built for fan-out tolerate less tail: their clients time out sooner.
GUARDRAIL_BASE: dict[str, tuple[int, float]] = {
    "pssh": (4_000_000, 0.03),
    "fanout": (6_000_000, 0.04),
    "balanced": (8_000_000, 0.05),
    "low-memory": (12_000_000, 0.07),
}

_REFERENCE_CPUS = 4


def suggest_queue_wait(profile: str, cpus: int | None = None) -> dict[str, Any]:
    """The recommended queue-wait tail guardrail for a profile on this machine.

    With fewer than four CPUs the signer pool is small and the agent shares its cores
    with its clients, so the tail threshold is scaled up by ``4 / cpus``.
    Raises ``KeyError`` for an unknown profile.
    """
    from secretivex.config.profiles import detect_cpu_count

    base_ns, ratio = GUARDRAIL_BASE[profile]
    ncpu = cpus if cpus is not None else detect_cpu_count()
    ncpu = max(ncpu, 1)
    scale = max(1.0, _REFERENCE_CPUS / ncpu)
    tail_ns = int(base_ns * scale)
    return {
        "profile": profile,
        "cpus": ncpu,
        "tail_ns": tail_ns,
        "tail_max_ratio": ratio,
        "rationale": (
            f"at most {ratio:.0%} of requests may wait longer than {tail_ns / 1e6:g} ms "
            f"for a signer (profile {profile} base {base_ns / 1e6:g} ms"
            + (f", scaled x{scale:g} for {ncpu} CPUs" if scale != 1.0 else "")
            + ")"
        ),
        "env": {
            "SLO_QUEUE_WAIT_TAIL_NS": str(tail_ns),
            "SLO_QUEUE_WAIT_TAIL_MAX_RATIO": f"{ratio:g}",
        },
    }


def guardrail_for_profile(profile: str, cpus: int | None = None) -> Guardrail:
    suggestion = suggest_queue_wait(profile, cpus)
    return Guardrail(
        tail_ns=int(suggestion["tail_ns"]),
        max_ratio=float(suggestion["tail_max_ratio"]),
        source=f"profile:{profile}",
    )


@dataclass(slots=True)
class GuardrailResult:
    """Outcome of checking one snapshot; ``ok`` is False on any failure."""

    ok: bool
    observed_ratio: float | None = None
    method: str = "none"  # histogram | percentiles | no-samples
    guardrail: Guardrail | None = None
    age_ms: int | None = None
    stale: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tail_ns": self.guardrail.tail_ns if self.guardrail else None,
            "tail_max_ratio": self.guardrail.max_ratio if self.guardrail else None,
            "source": self.guardrail.source if self.guardrail else None,
            "observed_ratio": self.observed_ratio,
            "method": self.method,
            "age_ms": self.age_ms,
            "stale": self.stale,
            "problems": list(self.problems),
        }


def snapshot_captured_ms(snapshot: Mapping[str, Any]) -> int | None:
    """``meta.captured_unix_ms`` (or a top-level ``captured_unix_ms``), if present."""
    meta = snapshot.get("meta")
    value = meta.get("captured_unix_ms") if isinstance(meta, Mapping) else None
    if value is None:
        value = snapshot.get("captured_unix_ms")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def check_freshness(
    snapshot: Mapping[str, Any], max_age_ms: int, now_ms: int | None = None
) -> tuple[bool, int | None, str | None]:
    """``(fresh, age_ms, problem)``: a snapshot without a capture time is never fresh."""
    captured = snapshot_captured_ms(snapshot)
    if captured is None:
        return False, None, "snapshot has no meta.captured_unix_ms"
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    age = now - captured
    if age > max_age_ms:
        return False, age, f"snapshot is stale: captured {age} ms ago (max {max_age_ms} ms)"
    return True, age, None


def _ratio_from_percentiles(percentiles: Mapping[str, Any], guardrail: Guardrail) -> float | None:
    """A lower bound of the tail ratio from published percentiles.

    If the nearest-rank ``pXX`` exceeds the tail, strictly more than ``1 - XX`` of the
    values do; if none does, nothing is provably above it and the bound is 0.
    """
    known = False
    for label, quantile in (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99)):
        value = percentiles.get(label)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        known = True
        if value > guardrail.tail_ns:
            return (1.0 - quantile) + 1e-9
    return 0.0 if known else None


def evaluate_queue_wait(
    snapshot: Mapping[str, Any],
    guardrail: Guardrail | None,
    max_age_ms: int | None = None,
    now_ms: int | None = None,
) -> GuardrailResult:
    """Check a metrics snapshot against a tail guardrail and/or a freshness limit."""
    result = GuardrailResult(ok=True, guardrail=guardrail)
    if max_age_ms is not None:
        fresh, age, problem = check_freshness(snapshot, max_age_ms, now_ms)
        result.age_ms = age
        if not fresh:
            result.ok = False
            result.stale = True
            result.problems.append(problem or "snapshot is stale")
    if guardrail is None:
        return result
    queue_wait = snapshot.get("queue_wait")
    if not isinstance(queue_wait, Mapping):
        result.ok = False
        result.problems.append("snapshot has no queue_wait section")
        return result
    buckets = queue_wait.get("buckets")
    ratio: float | None = None
    if isinstance(buckets, list) and buckets:
        try:
            ratio = tail_ratio_from_buckets(buckets, guardrail.tail_ns)
            result.method = "histogram"
        except (KeyError, TypeError, ValueError):
            result.ok = False
            result.problems.append("queue_wait.buckets is malformed")
            return result
    else:
        percentiles = queue_wait.get("percentiles_ns")
        count = queue_wait.get("count")
        if isinstance(percentiles, Mapping) and count:
            ratio = _ratio_from_percentiles(percentiles, guardrail)
            result.method = "percentiles"
    if ratio is None:
        # Nothing waited: a tail guardrail trivially holds.
        result.method = "no-samples"
        result.observed_ratio = 0.0
        return result
    result.observed_ratio = ratio
    if ratio > guardrail.max_ratio:
        result.ok = False
        result.problems.append(
            f"queue-wait tail: {ratio:.2%} of requests waited longer than "
            f"{guardrail.tail_ns} ns (max {guardrail.max_ratio:.2%})"
        )
    return result


def format_suggestion(suggestion: Mapping[str, Any], mode: str = "text") -> str:
    """Render ``suggest_queue_wait`` output for ``secretivex agent suggest-queue-wait``.

    ``text``: a sentence plus export lines; ``json``: the document; ``quiet``: stable
    ``key=value`` lines for scripts (profile, cpus, tail_ns, tail_max_ratio).
    """
    if mode == "json":
        import json

        return json.dumps(dict(suggestion), indent=2, sort_keys=True)
    if mode == "quiet":
        return "\n".join(
            f"{key}={suggestion[key]}" for key in ("profile", "cpus", "tail_ns", "tail_max_ratio")
        )
    if mode != "text":
        raise ValueError(f"unknown format {mode!r}: text, json or quiet")
    env = suggestion.get("env") or {}
    lines = [f"queue-wait guardrail for profile {suggestion['profile']}: {suggestion['rationale']}"]
    lines += [f"export {key}={value}" for key, value in env.items()]
    return "\n".join(lines)
