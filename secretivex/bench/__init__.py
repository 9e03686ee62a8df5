"""The load generator (``secretivex bench``): workloads, report, schema, gate verdicts."""

from __future__ import annotations

from .model import BenchReport
from .report import REPORT_SCHEMA_VERSION, render_csv, render_text, report_schema, validate_report
from .runner import BenchError, BenchOptions, parse_flags, run_bench

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "BenchError",
    "BenchOptions",
    "BenchReport",
    "parse_flags",
    "render_csv",
    "render_text",
    "report_schema",
    "run_bench",
    "validate_report",
]
