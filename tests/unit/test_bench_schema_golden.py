"""Bench report compatibility: the shipped schema vs the committed golden one."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from metrics_compat import incompatibilities, schema_version_of
from test_bench_report import sample_report

from secretivex.bench.model import BenchReport
from secretivex.bench.report import (
    REPORT_SCHEMA_VERSION,
    render_report_schema,
    report_schema,
    validate_report,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def golden(version: int) -> dict[str, Any]:
    path = GOLDEN / f"bench-report.v{version}.schema.json"
    if not path.exists():
        pytest.fail(
            f"report schema_version is {version} but {path.name} is missing: copy "
            "secretivex/bench/report.schema.json there when you bump the version"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_version_constant_matches_the_schema() -> None:
    assert schema_version_of(report_schema()) == REPORT_SCHEMA_VERSION


def test_no_incompatible_change_without_a_version_bump() -> None:
    problems = incompatibilities(golden(REPORT_SCHEMA_VERSION), report_schema())
    assert not problems, (
        "incompatible bench report change without a schema_version bump:\n  "
        + "\n  ".join(problems)
        + "\nBump REPORT_SCHEMA_VERSION (and the schema's const) and add a golden."
    )


def test_sample_report_matches_the_golden() -> None:
    jsonschema.Draft202012Validator(golden(REPORT_SCHEMA_VERSION)).validate(sample_report())
    assert validate_report(sample_report()) == []


def test_removing_a_report_field_is_caught() -> None:
    new = copy.deepcopy(report_schema())
    del new["properties"]["results"]["properties"]["rps"]
    assert "results.rps: removed or renamed" in incompatibilities(report_schema(), new)


def test_strict_validation_rejects_unknown_and_missing_fields() -> None:
    report = sample_report()
    report["results"]["extra"] = 1
    del report["latency_us"]["p99"]
    problems = validate_report(report)
    assert any("extra" in p for p in problems)
    assert any("p99" in p for p in problems)


def test_shipped_schema_is_generated_from_the_model() -> None:
    shipped = (
        Path(__file__).resolve().parents[2] / "secretivex/bench/report.schema.json"
    ).read_text()
    assert shipped == render_report_schema(), "stale report.schema.json: run `make gen`"


def test_the_model_and_the_schema_agree_on_a_sample() -> None:
    report = sample_report()
    assert BenchReport.model_validate(report).model_dump(mode="json") == report
    report["results"]["failures"]["bogus"] = 1
    with pytest.raises(ValueError):
        BenchReport.model_validate(report)


def test_reports_written_before_connect_eagain_still_validate() -> None:
    report = sample_report()
    del report["results"]["failures"]["connect_eagain"]
    del report["run"]["connect_retry"]
    assert validate_report(report) == []
