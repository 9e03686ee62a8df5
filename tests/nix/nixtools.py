"""Shared helpers for tests/nix (imported as `nixtools`; tests/nix is on sys.path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "nixos-module" / "testing"


def require_tool(name: str, hint: str) -> str:
    """Path of tool NAME; skip without it, or fail under SECRETIVEX_REQUIRE_ALL=1."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} not found ({hint})"
    if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
        pytest.fail(f"SECRETIVEX_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


class NixEvalError(Exception):
    """nix-instantiate failed; the message is its stderr."""
