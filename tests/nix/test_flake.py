"""flake.nix, evaluated against a fake nixpkgs (nixos-module/testing/flake-eval.nix).

Checks the outputs' shape per system, that the package is built from pyproject.toml
(version, dependencies, build system), that the VM tests exist and say what they test,
and that the VM test nodes' settings pass the real validator. `nix flake check` itself
needs nixpkgs and runs elsewhere (docs/release.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nixtools import REPO, TESTING

pytestmark = pytest.mark.nix

LINUX = ["aarch64-linux", "x86_64-linux"]
DARWIN = ["aarch64-darwin", "x86_64-darwin"]


@pytest.fixture(scope="module")
def flake(nix_eval: Callable[..., Any]) -> Any:
    return nix_eval(TESTING / "flake-eval.nix")


@pytest.fixture(scope="module")
def pyproject() -> Any:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _dist_name(requirement: str) -> str:
    name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_outputs_and_systems(flake: Any) -> None:
    assert flake["inputs"] == {"nixpkgs": "github:NixOS/nixpkgs/nixos-unstable"}
    assert flake["outputs"] == [
        "apps",
        "checks",
        "devShells",
        "nixosModules",
        "overlays",
        "packages",
    ]
    for output in ["packages", "apps", "devShells", "checks"]:
        assert sorted(flake["systems"][output]) == sorted(LINUX + DARWIN), output
    for system in LINUX:
        assert flake["checks"][system] == [
            "config-rejected",
            "package",
            "version",
            "vm-shared-host",
            "vm-user-mode",
        ]
    for system in DARWIN:
        assert flake["checks"][system] == ["package", "version"]
    assert flake["nixosModuleIsFunction"] is True
    assert flake["overlayIsFunction"] is True
    assert flake["sameAsOverlay"] is True


def test_package_comes_from_pyproject(flake: Any, pyproject: Any) -> None:
    pkg = flake["package"]
    project = pyproject["project"]
    assert pkg["pname"] == project["name"]
    assert pkg["version"] == project["version"]  # single-sourced
    assert pkg["pyproject"] is True
    assert pkg["build-system"] == ["setuptools"]
    assert sorted(pkg["dependencies"]) == sorted(_dist_name(r) for r in project["dependencies"])
    assert pkg["mainProgram"] == "secretivex"
    assert project["scripts"]["secretivex"]  # the console script the app runs
    # pytestCheckHook only runs when installCheckPhase is left alone
    assert pkg["installCheckPhase"] is None
    assert flake["versionCheck"] == {
        "command": "secretivex --version",
        "version": f"secretivex {project['version']}",
    }
    assert "secretivex.agent.systemd" in pkg["pythonImportsCheck"]
    # buildPythonPackage's current name for the test paths (pytestFlagsArray is legacy)
    assert pkg["enabledTestPaths"] == ["tests/unit"] and pkg["pytestFlagsArray"] is None
    assert pkg["platforms"] == LINUX[::-1] + DARWIN[::-1]
    assert flake["packageDarwin"]["version"] == project["version"]


def test_package_source_filter(flake: Any) -> None:
    keeps = flake["sourceFilter"]
    kept = ["pyproject.toml", "README.md", "secretivex/__init__.py", "tests/unit/test_systemd.py"]
    for rel in kept:
        assert keeps[rel] is True, rel
    for rel in [
        ".venv/bin/python",
        ".git/config",
        "secretivex/__pycache__/systemd.cpython-311.pyc",
        "secretivex.egg-info",
        "flake.nix",
        "result",
    ]:
        assert keeps[rel] is False, rel


def test_app_and_dev_shell(flake: Any) -> None:
    app = flake["app"]
    assert app["type"] == "app"
    assert app["program"].endswith("/bin/secretivex")
    shell = flake["devShell"]
    for tool in ["python3-env", "softhsm", "opensc", "openssh", "docker-client"]:
        assert tool in shell, tool


def test_vm_test_scripts_mention_what_they_test_text_check(flake: Any) -> None:
    """A TEXT check only: the VM test scripts contain these commands. It proves nothing
    about their outcome; test_vm_tests_run_where_nixpkgs_exists runs them."""
    user = flake["vmTests"]["user-mode"]
    assert sorted(user["nodeNames"]) == ["client", "server"]
    for phrase in [
        "ssh alice@server",
        "ssh-add -l",
        "SSH_AUTH_SOCK",
        "systemctl --user reload secretivex.service",
        "MemoryDenyWriteExecute=yes",
    ]:
        assert phrase in user["testScript"], phrase
    shared = flake["vmTests"]["shared-host"]
    assert shared["nodeNames"] == ["shared"]
    for phrase in [
        "su bob",
        "su mallory",
        "shared.fail",
        "ssh-keygen -Y sign",
        "a missing credential",
        "activation left every socket as its unit made it",
        "su dave",
    ]:
        assert phrase in shared["testScript"], phrase
    rejected = flake["vmTests"]["config-rejected"]["script"]
    assert "testBuildFailure.log" in rejected and "agent.max_connections" in rejected


def test_vm_test_nodes_evaluate_through_the_module(flake: Any) -> None:
    client, shared = flake["nodes"]["client"], flake["nodes"]["shared"]
    for node in (client, shared):
        assert node["undeclared"] == [] and node["failedAssertions"] == []
    assert client["mode"] == "user" and client["userSockets"] == ["secretivex"]
    assert shared["mode"] == "system"
    assert sorted(shared["systemSockets"].values()) == [
        ["/run/secretivex/agent.sock"],
        ["/run/secretivex/team.sock"],
    ]
    assert shared["loadCredential"] == ["team-passphrase:/run/keys/secretivex-team-passphrase"]
    assert (
        shared["settings"]["stores"][0]["passphrase_file"]
        == "/run/credentials/secretivex.service/team-passphrase"
    )


@pytest.mark.parametrize("node", ["client", "shared"])
def test_vm_test_settings_pass_the_real_validator(
    flake: Any, node: str, secretivex_bin: Path, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(flake["nodes"][node]["settings"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETIVEX_")}
    proc = subprocess.run(
        [str(secretivex_bin), "config", "validate", "--no-path-checks", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _nixpkgs() -> str | None:
    """A local nixpkgs to build the VM tests with: $SECRETIVEX_NIXPKGS or <nixpkgs>."""
    explicit = os.environ.get("SECRETIVEX_NIXPKGS")
    if explicit:
        return explicit
    try:
        found = subprocess.run(
            ["nix-instantiate", "--find-file", "nixpkgs"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else None


@pytest.mark.slow
def test_vm_tests_run_where_nixpkgs_exists(nix_instantiate: str) -> None:
    """The NixOS VM tests themselves (user mode, shared host), where they can run."""
    nixpkgs = _nixpkgs()
    if nixpkgs is None:
        # Allowed in tests/skipguard.py: this machine has Nix but no nixpkgs.
        pytest.skip("nixpkgs is not reachable (set SECRETIVEX_NIXPKGS=/path/to/nixpkgs)")
    if not Path("/dev/kvm").exists():
        pytest.skip("nixpkgs is reachable but /dev/kvm is missing: NixOS VM tests need KVM")
    system = {"x86_64": "x86_64-linux", "aarch64": "aarch64-linux"}[os.uname().machine]
    cmd = [
        "nix",
        "--extra-experimental-features",
        "nix-command flakes",
        "build",
        "--no-link",
        "-L",
        "--override-input",
        "nixpkgs",
        f"path:{nixpkgs}",
        f"{REPO}#checks.{system}.vm-user-mode",
        f"{REPO}#checks.{system}.vm-shared-host",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
