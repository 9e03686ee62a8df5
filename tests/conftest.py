"""Loaded for every test under tests/ (unit, integration, container, nix, security, ...).

It only wires in the skip guard: under SECRETIVEX_REQUIRE_ALL=1 every skip fails
with its reason (see tests/skipguard.py for what it catches and the allowlist).
"""

from skipguard import (
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_makereport,
)

__all__ = ["pytest_make_collect_report", "pytest_report_header", "pytest_runtest_makereport"]
