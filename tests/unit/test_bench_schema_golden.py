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

from secretivex.bench.report import REPORT_SCHEMA_VERSION, report_schema, validate_report

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
