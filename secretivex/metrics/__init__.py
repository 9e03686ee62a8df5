"""Agent metrics: counters, queue-wait histogram, snapshots, Prometheus text, guardrails.

The agent owns one ``MetricsRecorder`` and calls its ``on_*`` methods on its event-loop
thread; ``run_metrics_writer`` (in the agent's task group) writes snapshots atomically.
See ``docs/metrics.md`` for every field and the compatibility policy.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from secretivex.metrics.guardrails import (
    Guardrail,
    GuardrailResult,
    check_freshness,
    evaluate_queue_wait,
    guardrail_for_profile,
    suggest_queue_wait,
)
from secretivex.metrics.histogram import (
    Log2Histogram,
    percentile_from_buckets,
    tail_ratio_from_buckets,
)
from secretivex.metrics.recorder import SCHEMA_VERSION, SNAPSHOT_KINDS, MetricsRecorder
from secretivex.metrics.writer import (
    load_snapshot,
    run_metrics_writer,
    write_metrics_files,
    write_now,
    write_snapshot_atomic,
)

if TYPE_CHECKING:
    from secretivex.metrics.prometheus import render_prometheus

__all__ = [
    "SCHEMA_VERSION",
    "SNAPSHOT_KINDS",
    "Guardrail",
    "GuardrailResult",
    "Log2Histogram",
    "MetricsRecorder",
    "check_freshness",
    "evaluate_queue_wait",
    "guardrail_for_profile",
    "load_snapshot",
    "percentile_from_buckets",
    "render_prometheus",
    "run_metrics_writer",
    "snapshot_schema",
    "suggest_queue_wait",
    "tail_ratio_from_buckets",
    "write_metrics_files",
    "write_now",
    "write_snapshot_atomic",
]


@cache
def _schema_text() -> str:
    from importlib import resources  # only for the schema: not on the agent's path

    return resources.files("secretivex.metrics").joinpath("snapshot.schema.json").read_text()


def snapshot_schema() -> dict[str, Any]:
    """The JSON Schema of metrics snapshots (a fresh copy)."""
    import json

    data: dict[str, Any] = json.loads(_schema_text())
    return data


def __getattr__(name: str) -> Any:
    # The Prometheus text format only for an agent with a textfile configured.
    if name == "render_prometheus":
        from secretivex.metrics.prometheus import render_prometheus

        return render_prometheus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
