"""pytest plugin registered by the ``secretivex`` distribution (entry point ``pytest11``).

Fixtures:

``secretivex_agent`` (module scope)
    A started :class:`~secretivex.testing.SecretivexContainer`: a SoftHSM-backed agent
    with Ed25519, ECDSA P-256 and RSA 3072 keys, its socket on the host. Override the
    ``secretivex_agent_options`` fixture (in a conftest.py or a test module, session or
    module scope) to change its arguments. Agents are keyed on their options: every
    module asking with the same options shares one container for the whole session
    (start-up is a few seconds), and a module with other options gets its own - never
    the agent another module happened to start first.

``secretivex_agent_pool`` (session scope)
    The agents behind ``secretivex_agent``: ``pool.get(**options)`` starts (once per
    distinct options) and returns one. Use it from your own session-scoped fixtures.

``secretivex_agent_factory`` (function scope)
    ``factory(**kwargs)`` starts one more container with those arguments; each is
    removed when the test ends. Use it for isolated agents (a test that adds keys with
    ``ssh-add``, restarts or stops the agent, or needs other key types).

Both skip the test, with the reason, when testcontainers is not installed or no Docker
engine answers. A container that fails to start is an error (with its logs), not a skip.

Image: the ``image`` option, else ``$SECRETIVEX_TESTING_IMAGE``, else the ini option
``secretivex_image``, else ``secretivex:softhsm``.

This module imports only pytest and the standard library; testcontainers is imported
by the fixtures, when a test asks for one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from secretivex.testing.container import SecretivexContainer

__all__ = [
    "AgentPool",
    "secretivex_agent",
    "secretivex_agent_factory",
    "secretivex_agent_options",
    "secretivex_agent_pool",
]

_PROBLEM = pytest.StashKey[str | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "secretivex_image",
        "image for the secretivex_agent fixtures (default secretivex:softhsm; "
        "$SECRETIVEX_TESTING_IMAGE wins)",
        default="",
    )


def _skip_without_docker(config: pytest.Config) -> None:
    if _PROBLEM not in config.stash:
        from secretivex.testing._engine import docker_problem

        config.stash[_PROBLEM] = docker_problem()
    problem = config.stash[_PROBLEM]
    if problem is not None:
        pytest.skip(f"secretivex_agent needs Docker: {problem}")


def _start(config: pytest.Config, options: dict[str, Any]) -> SecretivexContainer:
    _skip_without_docker(config)
    from secretivex.testing.container import SecretivexContainer

    kwargs = dict(options)
    image = (
        kwargs.pop("image", None)
        or os.environ.get("SECRETIVEX_TESTING_IMAGE")
        or str(config.getini("secretivex_image") or "")
        or None
    )
    return SecretivexContainer(image, **kwargs).start()


@pytest.fixture(scope="session")
def secretivex_agent_options() -> dict[str, Any]:
    """Keyword arguments for the session's ``secretivex_agent`` (override to change)."""
    return {}


class AgentPool:
    """Started agents keyed on their options, shared for the session."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._agents: dict[str, SecretivexContainer] = {}

    @staticmethod
    def key(options: dict[str, Any]) -> str:
        return json.dumps(options, sort_keys=True, default=repr)

    def get(self, **options: Any) -> SecretivexContainer:
        """The agent for these options, started on first use."""
        key = self.key(options)
        agent = self._agents.get(key)
        if agent is None:
            agent = _start(self._config, options)
            self._agents[key] = agent
        return agent

    def __len__(self) -> int:
        return len(self._agents)

    def close(self) -> None:
        errors = []
        for agent in reversed(list(self._agents.values())):
            try:
                agent.stop()
            except Exception as exc:
                errors.append(exc)
        self._agents.clear()
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def secretivex_agent_pool(request: pytest.FixtureRequest) -> Iterator[AgentPool]:
    """Session agents keyed on their options (``pool.get(**options)``)."""
    pool = AgentPool(request.config)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def secretivex_agent(
    secretivex_agent_pool: AgentPool, secretivex_agent_options: dict[str, Any]
) -> SecretivexContainer:
    """A token-backed secretivex agent for these options; ``.env()`` gives ``SSH_AUTH_SOCK``."""
    return secretivex_agent_pool.get(**secretivex_agent_options)


@pytest.fixture
def secretivex_agent_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., SecretivexContainer]]:
    """``factory(**SecretivexContainer kwargs)`` -> a started agent, removed after the test."""
    started: list[SecretivexContainer] = []

    def factory(**kwargs: Any) -> SecretivexContainer:
        agent = _start(request.config, kwargs)
        started.append(agent)
        return agent

    try:
        yield factory
    finally:
        errors = []
        for agent in reversed(started):
            try:
                agent.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
