"""Shared helpers for tests/nix (imported as `nixtools`; tests/nix is on sys.path)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTING = REPO / "nixos-module" / "testing"
#: A nixpkgs lib directory (nix-community/nixpkgs.lib's lib/): when set, eval.nix
#: evaluates the module with the real module system instead of the stand-in lib.nix
#: (a cross-check where one is at hand; CI has no network and uses the stand-in).
REAL_LIB = os.environ.get("SECRETIVEX_NIXPKGS_LIB", "")


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
