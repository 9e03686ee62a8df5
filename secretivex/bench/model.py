"""The bench report as pydantic models: the one definition its JSON Schema is made from.

``report.schema.json`` (shipped, and pinned by a golden copy under ``tests/golden/``) is
generated from :class:`BenchReport` by ``report_schema_from_model`` (``make gen``); a
unit test fails when the two differ. Fields keep the exact names and nesting of
schema version 1: adding a field is compatible, anything else bumps
``REPORT_SCHEMA_VERSION`` (docs/bench.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "BenchReport",
    "report_schema_from_model",
]

#: Bump on any rename, removal or type change of a report field (not on additions).
REPORT_SCHEMA_VERSION: Final = 1

Count = Annotated[int, Field(ge=0)]
UnixMs = Annotated[int, Field(ge=0)]
Micros = Annotated[float | None, Field(ge=0)]
Nanos = Annotated[int | None, Field(ge=0)]
Ratio = Annotated[float | None, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Strict):
    hostname: str
    cpus: int = Field(ge=1)
    platform: str
    machine: str
    pid: int


class Meta(_Strict):
    schema_version: Literal[1]
    tool: Literal["secretivex bench"]
    versions: dict[str, str] = Field(
        json_schema_extra={"required": ["secretivex", "python"]},
    )
    host: Host
    started_unix_ms: UnixMs
    measure_started_unix_ms: UnixMs
    finished_unix_ms: UnixMs
    label: str | None


class KeyInfo(_Strict):
    fingerprint: str = Field(pattern=r"^SHA256:")
    type: str
    comment: str


class Run(_Strict):
    workload: Literal["sign", "list"]
    socket: str
    mode: Literal["requests", "duration"]
    concurrency: int = Field(ge=1)
    requests_per_worker: int | None = Field(ge=1)
    duration_ms: int | None = Field(ge=0)
    warmup_per_worker: Count
    reconnect: bool
    #: Backlog-full connects retried politely (a ceiling measurement) instead of counted
    #: as ``connect_eagain`` failures.
    connect_retry: bool = Field(
        default=False,
        description="Backlog-full (EAGAIN) connects were retried politely: the run measures "
        "a ceiling, not what clients that fail on EAGAIN see.",
    )
    processes: int = Field(ge=1)
    connect_timeout_ms: Count
    response_timeout_ms: Count
    worker_start_spread_ms: Count
    payload_size: Count
    flags: Count
    key: KeyInfo | None


class Failures(_Strict):
    request_failures: Count
    request_timeouts: Count
    connect_failures: Count
    connect_eagain: Count = Field(
        default=0,
        description="Connects refused with EAGAIN because the agent's listen backlog was "
        "full (what asyncio's open_unix_connection raises as BlockingIOError).",
    )
    worker_failures: Count


class FailureDetail(_Strict):
    agent_failure: Count
    io_error: Count
    protocol_error: Count


class Results(_Strict):
    attempted: Count
    ok: Count
    failed: Count
    failures: Failures
    failure_detail: FailureDetail
    worker_errors: list[str]
    success_rate: Ratio
    failure_rate: Ratio
    elapsed_ms: float = Field(ge=0)
    rps: float = Field(ge=0)
    attempted_rps: float = Field(ge=0)


class Latency(_Strict):
    samples: Count
    sampled: bool
    min: Micros
    avg: Micros
    max: Micros
    p50: Micros
    p90: Micros
    p95: Micros
    p99: Micros


class Generator(_Strict):
    processes: int = Field(ge=1)
    cpu_user_s: float = Field(ge=0)
    cpu_system_s: float = Field(ge=0)
    cpu_s: float = Field(ge=0)
    cpu_percent: float = Field(ge=0)
    host_cpus: int = Field(ge=1)


class Percentiles(_Strict):
    p50: Nanos
    p90: Nanos
    p95: Nanos
    p99: Nanos


class Bucket(_Strict):
    le_ns: int = Field(ge=1)
    count: Count


class GuardrailVerdict(_Strict):
    tail_ns: Count
    tail_max_ratio: float = Field(ge=0, le=1)
    source: str
    observed_ratio: Ratio
    ok: bool | None


class QueueWait(_Strict):
    source: str
    available: bool
    problem: str | None
    captured_unix_ms: int | None = Field(ge=0)
    age_ms: int | None = Field(ge=0)
    fresh: bool
    window: Literal["delta", "cumulative"] | None
    count: Count
    avg_ns: Nanos
    max_ns: Nanos
    percentiles_ns: Percentiles
    buckets: list[Bucket]
    guardrail: GuardrailVerdict | None


class BenchReport(_Strict):
    """Output of `secretivex bench run --json`. Compatibility: adding fields keeps
    meta.schema_version; renaming, removing or retyping a field bumps it (docs/bench.md)."""

    meta: Meta
    run: Run
    results: Results
    latency_us: Latency
    generator: Generator
    queue_wait: QueueWait | None


# -- schema generation ------------------------------------------------------------------

_SCHEMA_HEAD: Final = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://secretivex.invalid/schemas/bench-report.schema.json",
    "title": "secretivex bench report",
}


def _simplify(node: Any) -> Any:
    """Plain JSON Schema for readers and the golden check: ``anyOf [X, null]`` becomes
    ``type: [X, "null"]``, ``const`` keeps its ``type``, pydantic's titles go away."""
    if isinstance(node, list):
        return [_simplify(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _simplify(value) for key, value in node.items() if key != "title"}
    if "properties" in node:  # property names are data, not keywords: keep "title" there
        out["properties"] = {name: _simplify(sub) for name, sub in node["properties"].items()}
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options and len(options) == 2:
        (other,) = [o for o in options if o != {"type": "null"}]
        if "$ref" not in other:
            del out["anyOf"]
            merged = dict(other)
            kind = merged.get("type")
            merged["type"] = [*(kind if isinstance(kind, list) else [kind]), "null"]
            if "enum" in merged:
                merged["enum"] = [*merged["enum"], None]
            out = {**merged, **out}
    return out


def _inline_nullable_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf [{$ref}, null]`` -> the referenced object with ``type: [object, null]``
    (the shape schema version 1 was written in)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        options = node.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            (other,) = [o for o in options if o != {"type": "null"}]
            ref = other.get("$ref", "")
            if ref.startswith("#/$defs/"):
                target = dict(walk(defs[ref.removeprefix("#/$defs/")]))
                target["type"] = ["object", "null"]
                rest = {k: walk(v) for k, v in node.items() if k != "anyOf"}
                return {**target, **rest}
        return {key: walk(value) for key, value in node.items()}

    return dict(walk(schema))


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline every object ``$ref``: the schema reads top to bottom like the report."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = walk(defs[ref.removeprefix("#/$defs/")])
            return {**target, **{k: walk(v) for k, v in node.items() if k != "$ref"}}
        return {key: walk(value) for key, value in node.items()}

    return dict(walk(schema))


def report_schema_from_model() -> dict[str, Any]:
    """The bench report's JSON Schema, generated from :class:`BenchReport`."""
    raw = BenchReport.model_json_schema(mode="serialization")
    schema = _inline_refs(_inline_nullable_refs(_simplify(raw)))
    # Fields added after version 1 have defaults, so they are optional in the schema
    # and reports written before them still validate; every report we write has them.
    return {**_SCHEMA_HEAD, **_simplify(schema)}
