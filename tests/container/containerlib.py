"""Helpers shared by the container suite's modules and its conftest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

REQUIRE_ALL = os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1"
DEV_IMAGE = os.environ.get("SECRETIVEX_TEST_IMAGE", "secretivex:dev")
SOFTHSM_IMAGE = os.environ.get("SECRETIVEX_TEST_SOFTHSM_IMAGE", "secretivex:softhsm")
#: The three algorithms every scenario covers, as SecretivexContainer key types...
TOKEN_KEYS = ("ed25519", "ecdsa-p256", "rsa3072")
#: ...and as ssh-add -l prints them, in that order.
TOKEN_KEY_KINDS = ("ED25519", "ECDSA", "RSA")
#: The CI-runner-like container's user.
RUNNER_UID = 1000
RUNNER_GID = 1000


def unavailable(reason: str) -> None:
    """Skip, or fail under SECRETIVEX_REQUIRE_ALL=1 (our CI)."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (SECRETIVEX_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


def container_exec(
    container: DockerContainer,
    script: str,
    user: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``sh -c SCRIPT`` in a running container; exit code and output like subprocess.run."""
    argv = ["sh", "-c", script]
    code, output = container.get_wrapped_container().exec_run(
        argv, user=user or "", environment=env or {}, demux=True
    )
    stdout, stderr = output if output is not None else (None, None)
    return subprocess.CompletedProcess(
        argv,
        int(code),
        (stdout or b"").decode(errors="replace"),
        (stderr or b"").decode(errors="replace"),
    )


def with_agent(sock: Path) -> dict[str, str]:
    """The host environment with SSH_AUTH_SOCK pointing at ``sock``."""
    env = dict(os.environ)
    env.pop("SSH_AGENT_PID", None)
    env["SSH_AUTH_SOCK"] = str(sock)
    return env


def sign_and_verify(directory: Path, public_line: str, env: dict[str, str]) -> str:
    """``ssh-keygen -Y sign`` with the agent key ``public_line``, then ``-Y verify``.

    Returns the verify output (``Good "file" signature for ...``).
    """
    from harness import run

    kind = public_line.split()[0]
    pub = directory / f"{kind}.pub"
    pub.write_text(public_line + "\n")
    data = directory / f"{kind}.data"
    data.write_bytes(
        b"signed through the secretivex agent socket\n" + os.urandom(16).hex().encode()
    )
    run(["ssh-keygen", "-Y", "sign", "-q", "-n", "file", "-f", str(pub), str(data)], env=env)
    allowed = directory / f"{kind}.allowed_signers"
    allowed.write_text(f"tester@example {public_line}\n")
    verified = run(
        ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "tester@example",
         "-n", "file", "-s", f"{data}.sig"],
        input=data.read_bytes(),
    )  # fmt: skip
    return verified.stdout + verified.stderr
