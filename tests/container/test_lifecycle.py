"""(c) Restarts keep the token's keys and bring the host socket back;
(d) a stopped agent fails its clients quickly and cleanly (no hang).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from containerlib import TOKEN_KEYS, with_agent
from harness import run

from secretivex.client import AgentError, SyncAgentClient
from secretivex.testing import SecretivexContainer

pytestmark = [pytest.mark.container, pytest.mark.softhsm]

#: "Quickly": a client of a stopped agent must fail within this many seconds.
PROMPT = 5.0


@pytest.fixture(params=["host-dir", "named-volume"])
def token_dir(
    request: pytest.FixtureRequest, docker_ready: None, tmp_path: Path
) -> Iterator[str | Path]:
    """Where the token lives: a host directory or a named volume (removed at the end).

    Request it before ``secretivex_agent_factory`` so that it outlives the containers.
    """
    if request.param == "host-dir":
        yield tmp_path / "tokens"
        return
    import docker

    client = docker.from_env()
    name = f"secretivex-test-tokens-{uuid.uuid4().hex[:8]}"
    client.volumes.create(name, labels={"org.secretivex.test": "tokens"})
    try:
        yield name
    finally:
        try:
            client.volumes.get(name).remove(force=True)
        finally:
            client.close()


def test_restart_keeps_token_keys_and_socket(
    token_dir: str | Path,
    secretivex_agent_factory: Callable[..., SecretivexContainer],
) -> None:
    agent = secretivex_agent_factory(keys=TOKEN_KEYS, token_dir=token_dir)
    before = agent.public_keys()
    assert len(before) == 3
    if isinstance(token_dir, Path):
        assert any(token_dir.iterdir())  # the token lives on the host

    agent.restart()
    assert agent.socket_path.is_socket()
    assert agent.public_keys() == before
    listed = run(["ssh-add", "-L"], env=with_agent(agent.socket_path))
    assert listed.stdout.splitlines() == before
    logs = b"".join(agent.get_logs()).decode()
    assert 'reusing token "secretivex"' in logs

    # A new container on the same token: same keys, none generated.
    agent.stop()
    again = secretivex_agent_factory(keys=TOKEN_KEYS, token_dir=token_dir)
    assert again.public_keys() == before
    assert "generating" not in b"".join(again.get_logs()).decode()


def test_restart_without_a_token_dir_keeps_keys_too(
    secretivex_agent_factory: Callable[..., SecretivexContainer],
) -> None:
    """The default token lives in the container's filesystem: a restart keeps it."""
    agent = secretivex_agent_factory(keys=("ed25519",))
    before = agent.public_keys()
    agent.restart()
    assert agent.public_keys() == before


def _timed_ssh_add(sock: Path) -> tuple[int, str, float]:
    began = time.monotonic()
    result = run(["ssh-add", "-l"], env=with_agent(sock), check=False, timeout=30)
    return result.returncode, result.stderr, time.monotonic() - began


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stopped_agent_fails_clients_quickly(
    secretivex_agent_factory: Callable[..., SecretivexContainer], how: str
) -> None:
    """``docker stop`` (SIGTERM) or ``docker kill`` (SIGKILL): no client hangs."""
    agent = secretivex_agent_factory(keys=("ed25519",))
    sock = agent.socket_path
    # A client connected before the stop, idle between requests.
    connected = SyncAgentClient.connect(sock, response_timeout=30)
    assert len(connected.list_identities()) == 1

    container = agent.get_wrapped_container()
    began = time.monotonic()
    if how == "stop":
        container.stop(timeout=10)
    else:
        container.kill()
    container.wait(timeout=30)
    assert time.monotonic() - began < 10, f"docker {how} took too long"

    # New clients: ssh-add fails at once, with exit 2 (cannot connect).
    code, stderr, took = _timed_ssh_add(sock)
    assert code == 2, stderr
    assert "Error connecting to agent" in stderr
    assert took < PROMPT

    # The connected client: its next request fails promptly instead of hanging.
    began = time.monotonic()
    with pytest.raises(AgentError):
        connected.list_identities()
    assert time.monotonic() - began < PROMPT
    connected.close()


def test_agent_comes_back_after_a_stop(
    secretivex_agent_factory: Callable[..., SecretivexContainer],
) -> None:
    """After ``docker start`` the same host socket path serves again."""
    agent = secretivex_agent_factory(keys=("ed25519",))
    before = agent.public_keys()
    container = agent.get_wrapped_container()
    container.stop(timeout=10)
    assert _timed_ssh_add(agent.socket_path)[0] == 2
    container.start()
    from secretivex.testing import AgentSocketWaitStrategy

    AgentSocketWaitStrategy(agent.socket_path, 1).with_startup_timeout(60).wait_until_ready(agent)
    assert agent.public_keys() == before
