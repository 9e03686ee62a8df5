"""docs/containers.md's appliance recipe, run as written (paths moved under a temp dir,
`sudo` dropped: the suite runs as root), plus the two claims next to it: a nested keys
mount under the read-only config mount fails, and an unreadable key is named."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from containerlib import DEV_IMAGE
from harness import keygen, require_tool

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "containers.md"
#: An image built from this checkout (the unreadable-key warning is new); falls back to
#: the suite's image.
IMAGE = os.environ.get("SECRETIVEX_TEST_DOC_IMAGE", DEV_IMAGE)


def recipe() -> str:
    text = DOC.read_text()
    marker = "<!-- test: tests/container/test_containers_doc.py runs this block"
    return text.split(marker, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def names() -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def _localise(block: str, root: Path, name: str, key: Path) -> str:
    block = block.replace("sudo ", "")
    block = block.replace("/run/secretivex", str(root / "run"))
    block = block.replace("/etc/secretivex", str(root / "etc"))
    # Inside the container the paths stay the image's: undo the host rewrite there.
    block = block.replace(f":{root / 'run'}", ":/run/secretivex")
    block = block.replace(f":{root / 'etc'}:ro", ":/etc/secretivex:ro")
    block = block.replace(f"paths: [{root / 'etc'}/keys]", "paths: [/etc/secretivex/keys]")
    block = block.replace("~/keys/deploy", str(key))
    block = block.replace("--name secretivex ", f"--name {name} ")
    block = block.replace("docker exec secretivex ", f"docker exec {name} ")
    block = block.replace("}}' secretivex ", f"}}}}' {name} ")
    return block.replace("secretivex:dev", IMAGE)


def test_appliance_recipe_runs_as_written(
    docker_ready: None, tmp_path: Path, names: list[str]
) -> None:
    require_tool("ssh-keygen", "ssh-add")
    keys = tmp_path / "src"
    keys.mkdir()
    key = keygen(keys, "deploy", "ed25519", comment="doc-deploy")
    root = tmp_path / "host"
    root.mkdir()
    name = f"sx-doc-{uuid.uuid4().hex[:8]}"
    names.append(name)
    script = _localise(recipe(), root, name, key)
    assert "/etc/secretivex:ro" in script and str(root / "etc") in script
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "doc-deploy (ED25519)" in result.stdout

    # The note beside it: an unreadable key is named, not silently dropped.
    (root / "etc" / "keys" / "deploy").chmod(0o600)
    os.chown(root / "etc" / "keys" / "deploy", 0, 0)
    subprocess.run(["docker", "restart", name], check=True, capture_output=True, timeout=120)
    subprocess.run(
        ["docker", "exec", name, "secretivex", "client", "wait-ready", "--timeout-ms", "30000"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    health = subprocess.run(
        ["docker", "exec", name, "secretivex", "client", "health"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60)
    if "skipped" not in health.stdout and IMAGE == DEV_IMAGE:
        pytest.skip(f"{IMAGE} predates the unreadable-key warning; set SECRETIVEX_TEST_DOC_IMAGE")
    warning = (
        "skipped /etc/secretivex/keys/deploy: permission denied "
        "(mode 0600, owner 0:0; the agent runs as uid 10001)"
    )
    assert warning in logs.stdout + logs.stderr
    assert "skipped: /etc/secretivex/keys/deploy: permission denied" in health.stdout


def test_nested_keys_mount_under_read_only_config_fails_as_the_doc_says(
    docker_ready: None, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    keys = tmp_path / "keys"
    keys.mkdir()
    result = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "none",
            "-v", f"{etc}:/etc/secretivex:ro", "-v", f"{keys}:/etc/secretivex/keys:ro",
            IMAGE, "--version",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "read-only file system" in result.stderr
    # The doc's alternative, a mount of its own, works.
    ok = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "none",
            "-v", f"{etc}:/etc/secretivex:ro", "-v", f"{keys}:/keys:ro", IMAGE, "--version",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
