"""docs/nixos.md's module examples, evaluated as written through the module (the
stand-in lib, or the real one with SECRETIVEX_NIXPKGS_LIB): no failed assertion, no
warning, no undeclared option; and what the module refuses for system mode."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nixtools import REAL_LIB, REPO, TESTING, NixEvalError

pytestmark = pytest.mark.nix

EVAL = TESTING / "eval.nix"
Eval = Callable[..., Any]


def module_blocks() -> list[str]:
    """The doc's ```nix blocks that are NixOS modules (not the flake.nix one)."""
    blocks = re.findall(r"```nix\n(.*?)```", (REPO / "docs" / "nixos.md").read_text(), re.S)
    modules = [b for b in blocks if "nixosConfigurations" not in b]
    assert len(modules) >= 3, modules
    return modules


def as_module(block: str) -> str:
    """A block as a module file: `{ ... }: { ... }` already is one; a bare
    `services.secretivex = { ... };` body is wrapped (and enabled, as in a config)."""
    if block.lstrip().startswith("{"):
        return block
    return "{ pkgs, ... }: {\n  services.secretivex.enable = true;\n" + block + "}\n"


def evaluate_module(nix_eval: Eval, tmp_path: Path, text: str) -> Any:
    module = tmp_path / "example.nix"
    module.write_text(text)
    out = nix_eval(EVAL, scenario="{}", extraModule=str(module))
    assert out["undeclared"] == [], out["undeclared"]
    return out


@pytest.mark.parametrize("index", range(len(module_blocks())))
def test_every_module_example_evaluates_cleanly(nix_eval: Eval, tmp_path: Path, index: int) -> None:
    out = evaluate_module(nix_eval, tmp_path, as_module(module_blocks()[index]))
    assert out["failedAssertions"] == []
    assert out["warnings"] == []


SYSTEM = """{{ ... }}: {{
  services.secretivex = {{
    enable = true;
    mode = "system";
    settings = {{ {settings} }};
  }};
  {extra}
}}
"""


@pytest.mark.parametrize(
    ("settings", "bad"),
    [
        ('metrics.path = "/run/secretivex/metrics.json";', "metrics"),
        ('audit.path = "/run/secretivex/audit.jsonl";', "audit"),
        ('audit.path = "/etc/secretivex/audit.jsonl";', "audit"),
    ],
)
def test_system_mode_refuses_paths_the_agent_cannot_write(
    nix_eval: Eval, tmp_path: Path, settings: str, bad: str
) -> None:
    """ProtectSystem=strict and a root-owned /run/secretivex: the build would pass
    (--no-path-checks) and the agent would then exit 2 on its first connection."""
    out = evaluate_module(nix_eval, tmp_path, SYSTEM.format(settings=settings, extra=""))
    (message,) = out["failedAssertions"]
    assert f"services.secretivex.settings.{bad}.path = " in message
    assert "/var/lib/secretivex" in message


@pytest.mark.parametrize(
    ("settings", "extra"),
    [
        ('metrics.path = "/var/lib/secretivex/metrics.json"; audit.path = "-";', ""),
        ('audit.path = "/var/lib/secretivex/audit/audit.jsonl";', ""),
        (
            'audit.path = "/var/log/secretivex/audit.jsonl";',
            'systemd.services.secretivex.serviceConfig.ReadWritePaths = [ "/var/log/secretivex" ];',
        ),
    ],
)
def test_system_mode_accepts_writable_paths(
    nix_eval: Eval, tmp_path: Path, settings: str, extra: str
) -> None:
    out = evaluate_module(nix_eval, tmp_path, SYSTEM.format(settings=settings, extra=extra))
    assert out["failedAssertions"] == []


def test_user_mode_is_not_checked(nix_eval: Eval, tmp_path: Path) -> None:
    """A user agent writes where its user may (the validator checks at start)."""
    text = '{ ... }: { services.secretivex = { enable = true; settings.audit.path = "/run/x"; }; }'
    out = evaluate_module(nix_eval, tmp_path, text)
    assert out["failedAssertions"] == []


def test_a_broken_example_would_fail(nix_eval: Eval, tmp_path: Path) -> None:
    """The harness has teeth: a misspelt option in an example is reported."""
    module = tmp_path / "broken.nix"
    module.write_text("{ ... }: { services.secretivex = { enable = true; setings = { }; }; }")
    if REAL_LIB:  # the real module system refuses it outright
        with pytest.raises(NixEvalError, match=r"services\.secretivex\.setings' does not exist"):
            nix_eval(EVAL, scenario="{}", extraModule=str(module))
    else:
        out = nix_eval(EVAL, scenario="{}", extraModule=str(module))
        assert out["undeclared"] == ["services.secretivex.setings"]
