"""Under ``SECRETIVEX_REQUIRE_ALL=1`` (CI) every skip is a failure that names its reason.

A skip is how a missing tool, package or file hides a regression: the run stays
green while the test never ran. This plugin is loaded for every test path by
``tests/conftest.py`` and catches skips wherever they come from:

- ``skipif``/``skip`` marks, at module, class or test level (setup phase);
- ``pytest.skip(...)`` inside fixtures and tests (setup or call phase);
- ``pytest.importorskip`` and ``pytest.skip(allow_module_level=True)`` at import
  time (the collect report of the module);
- helpers that call ``pytest.skip`` on our behalf (``require_tool``, the public
  ``secretivex.testing`` plugin without Docker, ...).

A skip survives only when it matches ``ALLOWED`` below: a short list of skips that
are right even in CI, each with the reason why. Without the variable the plugin does
nothing, so a laptop without Docker or SoftHSM still runs what it can.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Generator
from dataclasses import dataclass

import pytest

ENV = "SECRETIVEX_REQUIRE_ALL"


@dataclass(frozen=True)
class AllowedSkip:
    nodeid: str  # fnmatch pattern over the node id
    reason: str  # regular expression searched in the skip reason
    why: str  # why this skip is right even in CI


# Skips that are right even in CI. Every other skip in the suite stands for something
# CI installs (tools via make system-deps, packages via the `test` extra, Docker,
# root), so it fails there. Things that look like allowances are handled elsewhere:
# - a DSA key on an OpenSSH that cannot make one (9.8+): the test makes the key with
#   `cryptography` instead and passes with a warning (tests/unit/test_keys.py);
# - the container suite's downstream runs (tests/container/test_plugin.py) assert the
#   *public* plugin's skips inside a child pytest that does not load this plugin and
#   has SECRETIVEX_REQUIRE_ALL removed from its environment.
# Add an entry only with its reason, e.g.
#   AllowedSkip("tests/x/test_y.py::test_z*", r"^needs kernel feature", "why CI lacks it"),
ALLOWED: tuple[AllowedSkip, ...] = (
    AllowedSkip(
        "tests/nix/test_flake.py::test_vm_tests_run_where_nixpkgs_exists",
        r"^nixpkgs is not reachable|/dev/kvm is missing",
        "the NixOS VM tests need a nixpkgs checkout and KVM; CI here has Nix without "
        "nixpkgs (flake evaluation runs against a fake nixpkgs in the other nix tests)",
    ),
)


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def allowed(nodeid: str, reason: str) -> AllowedSkip | None:
    for entry in ALLOWED:
        if fnmatch.fnmatchcase(nodeid, entry.nodeid) and re.search(entry.reason, reason):
            return entry
    return None


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The human reason of a skipped report (its longrepr is (path, line, reason))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail(report: pytest.TestReport | pytest.CollectReport, where: str) -> None:
    reason = skip_reason(report)
    if allowed(report.nodeid, reason) is not None:
        return
    report.outcome = "failed"
    report.longrepr = (
        f"{ENV}=1 forbids skipping: {report.nodeid or '<root>'} was skipped at {where}: {reason}\n"
        "Install what it needs (make system-deps; pip install -e '.[test]'), or, if the "
        "skip is right even in CI, add it with its reason to tests/skipguard.py ALLOWED."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    if enabled() and report.skipped and not hasattr(report, "wasxfail"):
        _fail(report, report.when)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, None]:
    outcome = yield
    report = outcome.get_result()
    if enabled() and report.skipped:
        _fail(report, "import (module-level skip or importorskip)")


def pytest_report_header(config: pytest.Config) -> str | None:
    if enabled():
        return f"{ENV}=1: skips fail unless listed in tests/skipguard.py ({len(ALLOWED)} allowed)"
    return None
