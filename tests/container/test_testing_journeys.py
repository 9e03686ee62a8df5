"""secretivex.testing as a downstream suite meets it: a missing image says how to get
one, session agents are keyed on their options, testcontainers-style accessors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from containerlib import SOFTHSM_IMAGE

from secretivex.testing import ImageNotFoundError, SecretivexContainer


def test_missing_image_says_how_to_get_one(docker_ready: None) -> None:
    container = SecretivexContainer("secretivex-journeys:no-such-image", keys=())
    with pytest.raises(ImageNotFoundError) as caught:
        container.start()
    message = str(caught.value)
    assert "secretivex-journeys:no-such-image" in message
    assert "make image" in message and "docker build --target softhsm" in message
    assert "500 Server Error" not in message


def test_accessors_exec_and_repr(
    secretivex_agent_factory: Callable[..., SecretivexContainer],
) -> None:
    agent = secretivex_agent_factory(keys=("ed25519=journeys",))
    assert agent.get_socket_path() == str(agent.socket_path)
    assert agent.get_env() == {"SSH_AUTH_SOCK": agent.get_socket_path()} == agent.env()
    result = agent.exec(["ssh-add", "-l"])
    from testcontainers.core.container import BytesExecResult

    assert isinstance(result, BytesExecResult)
    assert result.exit_code == 0 and b"journeys (ED25519)" in result.output
    text = repr(agent)
    assert text.startswith(f"<SecretivexContainer {SOFTHSM_IMAGE} running socket=")
    assert agent.get_socket_path() in text and "keys=[ed25519=journeys]" in text
    (identity,) = agent.identities()
    assert repr(identity) == f"AgentIdentity(ssh-ed25519 {identity.fingerprint} 'journeys')"


MODULE = """\
import os
import pytest

@pytest.fixture(scope="module")
def secretivex_agent_options():
    return {{"keys": ("ed25519={label}",)}}

def test_keys(secretivex_agent):
    comments = [i.comment for i in secretivex_agent.identities()]
    assert comments == ["{label}"], comments
    with open(os.environ["OUT"], "a") as out:
        out.write("{name} " + secretivex_agent.get_socket_path() + "\\n")
"""


def test_session_agent_is_keyed_on_options(docker_ready: None, tmp_path: Path) -> None:
    """Three modules: a and c ask for the same options, b for others. Each gets what it
    asked for, whatever the order; a and c share one container."""
    project = tmp_path / "downstream"
    project.mkdir()
    for name, label in (("a", "alpha"), ("b", "beta"), ("c", "alpha")):
        (project / f"test_{name}.py").write_text(MODULE.format(label=label, name=name))
    out = tmp_path / "sockets.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        TESTCONTAINERS_RYUK_DISABLED="true",
        SECRETIVEX_TESTING_IMAGE=SOFTHSM_IMAGE,
        OUT=str(out),
        PYTHONDONTWRITEBYTECODE="1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project)],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    sockets = dict(line.split(" ", 1) for line in out.read_text().splitlines())
    assert sockets["a"] == sockets["c"] != sockets["b"], textwrap.indent(out.read_text(), "  ")


def test_unpullable_reaper_image_says_to_disable_ryuk(docker_ready: None) -> None:
    """Ryuk left on (testcontainers' default) on an engine that cannot pull its image:
    one error naming TESTCONTAINERS_RYUK_DISABLED, not the engine's raw 500 from inside
    testcontainers. (A fresh process: testcontainers reads its settings at import.)"""
    code = textwrap.dedent(
        f"""\
        from secretivex.testing import ImageNotFoundError, SecretivexContainer
        try:
            SecretivexContainer({SOFTHSM_IMAGE!r}, keys=()).start()
        except ImageNotFoundError as exc:
            print("MESSAGE", exc)
        else:
            raise SystemExit("started with a reaper image nobody can pull")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTCONTAINERS_")}
    env["RYUK_CONTAINER_IMAGE"] = "secretivex-journeys/no-such-ryuk:0"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    message = result.stdout.split("MESSAGE ", 1)[1]
    assert "secretivex-journeys/no-such-ryuk:0" in message
    assert "TESTCONTAINERS_RYUK_DISABLED=true" in message
    assert "500 Server Error" not in message
