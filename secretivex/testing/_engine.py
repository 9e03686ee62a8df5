"""Is there a Docker engine to run containers on? (Imports testcontainers lazily.)"""

from __future__ import annotations

__all__ = ["docker_problem"]

_INSTALL_HINT = "pip install 'secretivex[testing]'"


def docker_problem(timeout: float = 10) -> str | None:
    """``None`` when testcontainers is installed and a Docker engine answers; else why not.

    Uses testcontainers' own client settings (``DOCKER_HOST``,
    ``~/.testcontainers.properties``), so the answer matches what the containers get.
    """
    try:
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        return f"testcontainers is not installed ({exc}); {_INSTALL_HINT}"
    try:
        client = DockerClient(timeout=timeout)
    except Exception as exc:
        return f"no Docker engine reachable: {exc}"
    try:
        client.client.ping()
    except Exception as exc:
        return f"no Docker engine reachable ({client.client.api.base_url}): {exc}"
    finally:
        client.client.close()
    return None
