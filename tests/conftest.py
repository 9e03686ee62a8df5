"""Loaded for every test under tests/ (unit, integration, container, nix, security, ...).

It wires in the skip guard: under SECRETIVEX_REQUIRE_ALL=1 every skip fails with its
reason (see tests/skipguard.py for what it catches and the allowlist). And it sets
umask 022: config files the tests write must not be group/other-writable, or the
agent refuses them (as ssh does), whatever umask the CI runner starts with.
"""

import os

from skipguard import (
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_makereport,
)

__all__ = ["pytest_make_collect_report", "pytest_report_header", "pytest_runtest_makereport"]

os.umask(0o022)
