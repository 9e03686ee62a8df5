"""Prometheus text exposition (format 0.0.4) of a metrics snapshot.

Meant for node_exporter's textfile collector: the agent writes the text atomically
next to its JSON snapshot. Durations are exported in seconds (the Prometheus base
unit); the queue-wait and request-latency histograms use fixed power-of-two ``le``
bounds from 256 ns to ~68.7 s so every scrape has the same bucket set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from secretivex.metrics.histogram import bucket_index

__all__ = ["PROMETHEUS_LE_EXPONENTS", "render_prometheus"]

#: ``le`` bounds are 2**e ns for these exponents (2**8 ns = 256 ns ... 2**36 ns = 68.7 s).
PROMETHEUS_LE_EXPONENTS = range(8, 37)

_PREFIX = "secretivex_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, Any]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items())
    return "{" + inner + "}"


def _num(value: float | int | None) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> str:
        full = _PREFIX + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        return full

    def sample(self, name: str, value: float | int | None, **labels: Any) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def sample_l(self, name: str, value: float | int | None, labels: Mapping[str, Any]) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")


def _histogram(out: _Writer, name: str, help_text: str, summary: Mapping[str, Any] | None) -> None:
    full = out.family(name, "histogram", help_text)
    summary = summary or {}
    per_index: dict[int, int] = {}
    for record in summary.get("buckets") or []:
        index = bucket_index(int(record["le_ns"]))
        per_index[index] = per_index.get(index, 0) + int(record["count"])
    count = int(summary.get("count") or 0)
    cumulative = 0
    exponents = list(PROMETHEUS_LE_EXPONENTS)
    pending = sorted(per_index.items())
    position = 0
    for exponent in exponents:
        while position < len(pending) and pending[position][0] <= exponent:
            cumulative += pending[position][1]
            position += 1
        le = (1 << exponent) / 1e9
        out.sample_l(f"{full}_bucket", cumulative, {"le": repr(le)})
    out.sample_l(f"{full}_bucket", count, {"le": "+Inf"})
    out.sample(f"{full}_sum", int(summary.get("sum_ns") or 0) / 1e9)
    out.sample(f"{full}_count", count)


def _items(mapping: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(mapping, Mapping):
        return sorted(mapping.items())
    return ()


def render_prometheus(snapshot: Mapping[str, Any]) -> str:
    """Render a snapshot (as made by ``MetricsRecorder.snapshot``) as Prometheus text."""
    out = _Writer()
    meta = snapshot.get("meta") or {}
    versions = meta.get("versions") or {}

    name = out.family("info", "gauge", "Agent build and profile (always 1).")
    out.sample(
        name,
        1,
        version=versions.get("secretivex", ""),
        python=versions.get("python", ""),
        profile=meta.get("profile", ""),
        schema_version=meta.get("schema_version", ""),
    )
    name = out.family("start_time_seconds", "gauge", "Unix time the agent started.")
    out.sample(name, int(meta.get("started_unix_ms") or 0) / 1000)
    name = out.family("metrics_reset_time_seconds", "gauge", "Unix time counters were last reset.")
    out.sample(name, int(meta.get("reset_unix_ms") or 0) / 1000)

    conns = snapshot.get("connections") or {}
    name = out.family("connections_opened_total", "counter", "Client connections accepted.")
    out.sample(name, conns.get("opened", 0))
    name = out.family("connections_closed_total", "counter", "Client connections closed.")
    out.sample(name, conns.get("closed", 0))
    name = out.family("connections_active", "gauge", "Client connections open now.")
    out.sample(name, conns.get("active", 0))
    name = out.family(
        "connections_max_active", "gauge", "Most connections open at once since the last reset."
    )
    out.sample(name, conns.get("max_active", 0))
    name = out.family("connections_rejected_total", "counter", "Connections refused, by reason.")
    for reason, count in _items(conns.get("rejected")):
        out.sample(name, count, reason=reason)

    requests = snapshot.get("requests") or {}
    name = out.family("requests_total", "counter", "Requests answered, by kind and outcome.")
    for kind, entry in _items(requests.get("by_kind")):
        for outcome, count in _items(entry.get("outcomes")):
            out.sample(name, count, kind=kind, outcome=outcome)
    _histogram(
        out,
        "request_duration_seconds",
        "Time from a request's arrival to its answer.",
        requests.get("latency"),
    )

    queue_wait = snapshot.get("queue_wait") or {}
    _histogram(
        out,
        "queue_wait_seconds",
        "Time requests waited for a signer slot.",
        queue_wait,
    )
    suggested = queue_wait.get("suggested") or {}
    if suggested:
        name = out.family(
            "queue_wait_suggested_tail_seconds",
            "gauge",
            "Suggested queue-wait tail threshold for the active profile.",
        )
        out.sample(name, int(suggested.get("tail_ns") or 0) / 1e9)
        name = out.family(
            "queue_wait_suggested_tail_max_ratio",
            "gauge",
            "Suggested maximum share of requests above the tail threshold.",
        )
        out.sample(name, float(suggested.get("tail_max_ratio") or 0.0))

    signs = snapshot.get("signs") or {}
    name = out.family("signs_total", "counter", "Signatures made, by store.")
    for store, count in _items(signs.get("by_store")):
        out.sample(name, count, store=store)

    confirm = snapshot.get("confirm") or {}
    name = out.family("confirm_total", "counter", "Confirmation decisions, by outcome.")
    for outcome, count in _items(confirm.get("outcomes")):
        out.sample(name, count, outcome=outcome)
    name = out.family(
        "confirm_reasons_total", "counter", "Confirmation decisions, by outcome and reason."
    )
    for outcome, reasons in _items(confirm.get("reasons")):
        for reason, count in _items(reasons):
            out.sample(name, count, outcome=outcome, reason=reason)

    cache = snapshot.get("list_cache") or {}
    name = out.family("list_cache_total", "counter", "Identity-listing cache lookups.")
    out.sample(name, cache.get("hits", 0), result="hit")
    out.sample(name, cache.get("misses", 0), result="miss")

    audit = snapshot.get("audit") or {}
    name = out.family(
        "audit_dropped_total", "counter", "Audit records lost to a full or failing audit disk."
    )
    out.sample(name, audit.get("dropped", 0))

    stores = snapshot.get("stores") or []
    name = out.family(
        "store_state", "gauge", "1 for each store's current state (ok, degraded, stopped)."
    )
    for store in stores:
        for state in ("ok", "degraded", "stopped"):
            out.sample(
                name,
                1 if store.get("state") == state else 0,
                store=store.get("name", ""),
                kind=store.get("kind", ""),
                state=state,
            )
    name = out.family("store_keys", "gauge", "Keys each store holds now.")
    for store in stores:
        out.sample(
            name, store.get("keys", 0), store=store.get("name", ""), kind=store.get("kind", "")
        )

    return "\n".join(out.lines) + "\n"
