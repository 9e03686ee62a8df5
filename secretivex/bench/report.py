"""The bench report: building it, its JSON Schema, validation, text and CSV views.

The report's shape is pinned by ``report.schema.json`` (shipped in the package) and a
golden copy under ``tests/golden/``; see the compatibility policy in ``docs/bench.md``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, Final

import jsonschema

from secretivex.metrics.guardrails import Guardrail
from secretivex.metrics.histogram import (
    PERCENTILES,
    bucket_index,
    exact_percentile,
    percentile_from_buckets,
    tail_ratio_from_buckets,
)

from .model import REPORT_SCHEMA_VERSION, report_schema_from_model

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "latency_summary",
    "queue_wait_section",
    "render_csv",
    "render_report_schema",
    "render_text",
    "report_schema",
    "validate_report",
]

FAILURE_KINDS: Final = (
    "request_failures",
    "request_timeouts",
    "connect_failures",
    "connect_eagain",
    "worker_failures",
)


@cache
def _schema_text() -> str:
    return resources.files("secretivex.bench").joinpath("report.schema.json").read_text()


def report_schema() -> dict[str, Any]:
    """The JSON Schema of bench reports as shipped (a fresh copy)."""
    data: dict[str, Any] = json.loads(_schema_text())
    return data


def render_report_schema() -> str:
    """``report.schema.json`` as generated from the pydantic model (``make gen``)."""
    return json.dumps(report_schema_from_model(), indent=2) + "\n"


def validate_report(report: Any) -> list[str]:
    """Every schema violation as ``path: message`` (empty when valid)."""
    validator = jsonschema.Draft202012Validator(
        report_schema(), format_checker=jsonschema.FormatChecker()
    )
    problems = []
    for error in sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(part) for part in error.absolute_path) or "<root>"
        problems.append(f"{where}: {error.message}")
    return problems


def host_info() -> dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cpus = os.cpu_count() or 1
    return {
        "hostname": socket.gethostname(),
        "cpus": cpus,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "pid": os.getpid(),
    }


def versions() -> dict[str, str]:
    from secretivex import __version__

    return {
        "secretivex": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def _us(ns: float | int | None) -> float | None:
    if ns is None:
        return None
    return round(ns / 1000.0, 1)


def latency_summary(
    sorted_ns: Sequence[int], count: int, sum_ns: int, min_ns: int, max_ns: int
) -> dict[str, Any]:
    """Latency block in µs: exact min/max/avg, nearest-rank percentiles of the samples."""
    samples = len(sorted_ns)
    out: dict[str, Any] = {
        "samples": samples,
        "sampled": samples < count,
        "min": _us(min_ns) if count else None,
        "avg": _us(sum_ns / count) if count else None,
        "max": _us(max_ns) if count else None,
    }
    for label, quantile in PERCENTILES:
        out[label] = _us(exact_percentile(sorted_ns, quantile))
    return out


# -- queue wait from agent metrics ----------------------------------------------------


def _qw(snapshot: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if not isinstance(snapshot, Mapping):
        return None
    section = snapshot.get("queue_wait")
    return section if isinstance(section, Mapping) else None


def _meta(snapshot: Mapping[str, Any] | None, key: str) -> Any:
    if not isinstance(snapshot, Mapping):
        return None
    meta = snapshot.get("meta")
    return meta.get(key) if isinstance(meta, Mapping) else None


def queue_wait_section(
    source: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    finished_unix_ms: int,
    guardrail: Guardrail | None,
    problem: str | None = None,
) -> dict[str, Any]:
    """The agent's queue-wait view of the run, from snapshots taken before and after.

    When both snapshots come from the same agent run and counter window, the histogram
    is the difference (``window: delta``); otherwise the latest cumulative one.
    """
    section: dict[str, Any] = {
        "source": source,
        "available": False,
        "problem": problem,
        "captured_unix_ms": None,
        "age_ms": None,
        "fresh": False,
        "window": None,
        "count": 0,
        "avg_ns": None,
        "max_ns": None,
        "percentiles_ns": {label: None for label, _ in PERCENTILES},
        "buckets": [],
        "guardrail": None,
    }
    after_qw = _qw(after)
    if after_qw is None:
        if section["problem"] is None:
            section["problem"] = "no queue_wait section in the metrics snapshot"
        return _with_guardrail(section, guardrail)
    captured = _meta(after, "captured_unix_ms")
    if isinstance(captured, int):
        section["captured_unix_ms"] = captured
        section["age_ms"] = max(finished_unix_ms - captured, 0)
        section["fresh"] = captured >= finished_unix_ms
        if not section["fresh"] and section["problem"] is None:
            section["problem"] = (
                f"metrics snapshot captured {finished_unix_ms - captured} ms before the run "
                "finished (stale)"
            )
    try:
        after_buckets = _bucket_map(after_qw.get("buckets") or [])
        before_qw = _qw(before)
        same_window = (
            before_qw is not None
            and _meta(before, "started_unix_ms") == _meta(after, "started_unix_ms")
            and _meta(before, "reset_unix_ms") == _meta(after, "reset_unix_ms")
            and _meta(before, "pid") == _meta(after, "pid")
        )
        if same_window and before_qw is not None:
            before_buckets = _bucket_map(before_qw.get("buckets") or [])
            delta = {
                index: after_buckets.get(index, 0) - before_buckets.get(index, 0)
                for index in after_buckets
            }
            if any(value < 0 for value in delta.values()):
                same_window = False
            else:
                buckets = {index: value for index, value in delta.items() if value > 0}
                count = int(after_qw.get("count") or 0) - int(before_qw.get("count") or 0)
                total_ns = int(after_qw.get("sum_ns") or 0) - int(before_qw.get("sum_ns") or 0)
        if not same_window:
            buckets = after_buckets
            count = int(after_qw.get("count") or 0)
            total_ns = int(after_qw.get("sum_ns") or 0)
        raw_max = after_qw.get("max_ns")
        max_seen = int(raw_max) if raw_max is not None else None
    except (TypeError, ValueError, KeyError):
        section["problem"] = "queue_wait section of the metrics snapshot is malformed"
        return _with_guardrail(section, guardrail)
    records = [{"le_ns": 1 << index, "count": n} for index, n in sorted(buckets.items())]
    if records:
        top = records[-1]["le_ns"]
        max_seen = top if max_seen is None else min(max_seen, top)
    section.update(
        available=True,
        window="delta" if same_window else "cumulative",
        count=count,
        avg_ns=(total_ns // count) if count > 0 else None,
        max_ns=max_seen if count > 0 else None,
        percentiles_ns={
            label: percentile_from_buckets(records, q, max_seen) for label, q in PERCENTILES
        },
        buckets=records,
    )
    return _with_guardrail(section, guardrail)


def _bucket_map(records: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for record in records:
        index = bucket_index(int(record["le_ns"]))
        out[index] = out.get(index, 0) + int(record["count"])
    return out


def _with_guardrail(section: dict[str, Any], guardrail: Guardrail | None) -> dict[str, Any]:
    if guardrail is None:
        return section
    verdict: dict[str, Any] = {
        "tail_ns": guardrail.tail_ns,
        "tail_max_ratio": guardrail.max_ratio,
        "source": guardrail.source,
        "observed_ratio": None,
        "ok": None,
    }
    if section["available"]:
        ratio = tail_ratio_from_buckets(section["buckets"], guardrail.tail_ns)
        ratio = 0.0 if ratio is None else ratio
        verdict["observed_ratio"] = round(ratio, 6)
        verdict["ok"] = ratio <= guardrail.max_ratio
    section["guardrail"] = verdict
    return section


# -- views ----------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def render_text(report: Mapping[str, Any]) -> str:
    """A short human summary."""
    run = report["run"]
    res = report["results"]
    lat = report["latency_us"]
    gen = report["generator"]
    shape = (
        f"{run['workload']} x{run['concurrency']} "
        + (f"{run['requests_per_worker']} req/worker" if run["mode"] == "requests" else "")
        + (f"{run['duration_ms'] / 1000:g} s" if run["mode"] == "duration" else "")
        + (" reconnect" if run["reconnect"] else " persistent")
        + f", {run['processes']} process(es)"
    )
    key = run.get("key")
    lines = [
        f"bench: {shape} against {run['socket']}",
    ]
    if key:
        from secretivex.client.display import visible

        # The agent named this key: its type and comment may carry terminal escapes.
        shown = f"{visible(str(key['type']))} {key['fingerprint']} {visible(str(key['comment']))}"
        lines.append(f"key: {shown}")
    failures = res["failures"]
    lines += [
        f"attempted {_fmt(res['attempted'])}  ok {_fmt(res['ok'])}  "
        f"failed {_fmt(res['failed'])} "
        f"(request {failures['request_failures']}, timeouts {failures['request_timeouts']}, "
        f"connect {failures['connect_failures']}, "
        f"connect EAGAIN {failures.get('connect_eagain', 0)}, "
        f"workers {failures['worker_failures']})"
        + (" [polite connect retrying]" if run.get("connect_retry") else ""),
        f"rps {_fmt(res['rps'])}  failure rate "
        + ("-" if res["failure_rate"] is None else f"{res['failure_rate']:.4%}")
        + f"  elapsed {_fmt(res['elapsed_ms'])} ms",
        "latency us: "
        + "  ".join(f"{name} {_fmt(lat[name])}" for name in ("p50", "p95", "p99", "max", "avg")),
        f"generator cpu {gen['cpu_s']:.2f} s ({gen['cpu_percent']:.0f}% of one core, "
        f"{gen['processes']} process(es))",
    ]
    if gen["cpu_percent"] >= 90 * gen["processes"]:
        lines.append(
            "warning: the load generator used nearly all of its cores; "
            "raise --processes or the numbers measure the generator"
        )
    qw = report.get("queue_wait")
    if qw:
        if qw["available"]:
            pct = qw["percentiles_ns"]
            lines.append(
                f"agent queue wait ({qw['window']}): count {_fmt(qw['count'])} "
                + "  ".join(f"{k} {_fmt(v)} ns" for k, v in pct.items())
            )
        if qw.get("problem"):
            lines.append(f"queue wait: {qw['problem']}")
        verdict = qw.get("guardrail")
        if verdict and verdict["ok"] is not None:
            lines.append(
                f"queue-wait guardrail {'ok' if verdict['ok'] else 'FAILED'}: "
                f"{verdict['observed_ratio']:.2%} above {verdict['tail_ns']} ns "
                f"(max {verdict['tail_max_ratio']:.2%})"
            )
    return "\n".join(lines)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, list):
        out[prefix] = json.dumps(value, separators=(",", ":"))
    else:
        out[prefix] = "" if value is None else value


CSV_SECTIONS: Final = ("meta", "run", "results", "latency_us", "generator")


def render_csv(report: Mapping[str, Any], header: bool = True) -> str:
    """One CSV row (plus a header) of the scalar fields; queue-wait buckets are left out."""
    flat: dict[str, Any] = {}
    for section in CSV_SECTIONS:
        _flatten(section, report.get(section), flat)
    qw = report.get("queue_wait")
    if isinstance(qw, Mapping):
        for key in ("available", "window", "count", "avg_ns", "max_ns", "age_ms", "fresh"):
            flat[f"queue_wait.{key}"] = "" if qw.get(key) is None else qw.get(key)
        for label, value in (qw.get("percentiles_ns") or {}).items():
            flat[f"queue_wait.percentiles_ns.{label}"] = "" if value is None else value
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerow(flat)
    return buffer.getvalue()
