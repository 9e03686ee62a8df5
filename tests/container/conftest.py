"""Fixtures for the container suite (pytest marker ``container``).

The suite dogfoods ``secretivex.testing``: agents in containers come from the public
plugin's ``secretivex_agent``/``secretivex_agent_factory`` fixtures, overridden here
only to put ``docker_ready`` first, which

- skips when no Docker engine answers, but fails under ``SECRETIVEX_REQUIRE_ALL=1``
  (our CI; the public plugin always skips);
- fails when an image is missing: tests never build images (``make image`` does,
  before pytest).

Every container is removed when its test (or the session) ends, also on failure; at
the end of the session anything still carrying this run's testcontainers session
label is removed as well (Ryuk, the reaper, is disabled here).
"""

from __future__ import annotations

import contextlib
import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from containerlib import (
    DEV_IMAGE,
    RUNNER_GID,
    RUNNER_UID,
    SOFTHSM_IMAGE,
    TOKEN_KEYS,
    unavailable,
)

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

    from secretivex.testing import SecretivexContainer


@pytest.fixture(scope="session")
def docker_ready() -> Iterator[None]:
    """A Docker engine answers, testcontainers is installed and both images exist."""
    from secretivex.testing import docker_problem

    problem = docker_problem()
    if problem is not None:
        unavailable(problem)
    import docker.errors
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

    client = DockerClient()
    try:
        missing = []
        for image in (DEV_IMAGE, SOFTHSM_IMAGE):
            try:
                client.client.images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(image)
        if missing:
            pytest.fail(
                f"image(s) {', '.join(missing)} not present: run `make image` "
                "(ci/build-image.sh); the container suite never builds images"
            )
        yield
        leftover = client.client.containers.list(
            all=True, filters={"label": f"{LABEL_SESSION_ID}={SESSION_ID}"}
        )
        for container in leftover:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True, v=True)
    finally:
        client.client.close()


# The public plugin's fixtures, with docker_ready (REQUIRE_ALL, images) first.


@pytest.fixture(scope="session")
def secretivex_agent_options() -> dict[str, Any]:
    return {"image": SOFTHSM_IMAGE, "keys": TOKEN_KEYS}


@pytest.fixture(scope="module")
def secretivex_agent(
    docker_ready: None, secretivex_agent: SecretivexContainer
) -> SecretivexContainer:
    return secretivex_agent


@pytest.fixture
def secretivex_agent_factory(
    docker_ready: None, secretivex_agent_factory: Callable[..., SecretivexContainer]
) -> Callable[..., SecretivexContainer]:
    def factory(**kwargs: Any) -> SecretivexContainer:
        kwargs.setdefault("image", SOFTHSM_IMAGE)
        return secretivex_agent_factory(**kwargs)

    return factory


# A CI-runner-like container: an unmodified image, a non-root user, no network.


@pytest.fixture(scope="session")
def runner_accounts(
    docker_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The image's /etc/passwd and /etc/group plus a ``runner`` user (1000:1000).

    OpenSSH's ssh and ssh-keygen refuse to run for a uid without a passwd entry; real
    runner images have one (GitHub's actions-runner image: ``runner``, uid 1001). Our
    image only has ``secretivex`` (10001), so the runner mounts account files that add
    ``runner`` — the image itself stays as built.
    """
    from testcontainers.core.docker_client import DockerClient

    client = DockerClient()
    directory = tmp_path_factory.mktemp("runner-accounts")
    directory.chmod(0o755)
    extra = {
        "passwd": f"runner:x:{RUNNER_UID}:{RUNNER_GID}::/tmp:/bin/sh\n",
        "group": f"runner:x:{RUNNER_GID}:\n",
    }
    files = {}
    # Read them from a created (never started) container; remove it with its volumes.
    container = client.client.containers.create(DEV_IMAGE, network_mode="none")
    try:
        for name, line in extra.items():
            chunks, _ = container.get_archive(f"/etc/{name}")
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                member = tar.extractfile(name)
                assert member is not None
                original = member.read()
            path = directory / name
            path.write_bytes(original + line.encode())
            path.chmod(0o644)
            files[name] = path
    finally:
        container.remove(force=True, v=True)
        client.client.close()
    return files


@pytest.fixture
def runner_factory(runner_accounts: dict[str, Path]) -> Iterator[Callable[..., DockerContainer]]:
    """``runner(mounts={host_dir_or_volume: container_dir}, user="1000:1000")`` -> started.

    ``secretivex:dev`` with its entrypoint replaced by ``sleep infinity`` (it has
    openssh-client and python3, like a typical runner image), ``--network none``,
    mounts read-only; run commands in it with ``containerlib.container_exec``.
    Removed when the test ends.
    """
    from testcontainers.core.container import DockerContainer

    started: list[DockerContainer] = []

    def runner(
        mounts: dict[Path | str, str], user: str = f"{RUNNER_UID}:{RUNNER_GID}"
    ) -> DockerContainer:
        container = DockerContainer(DEV_IMAGE, command="infinity")
        for host, inside in mounts.items():
            container.with_volume_mapping(str(host), inside, "ro")
        for name, path in runner_accounts.items():
            container.with_volume_mapping(str(path), f"/etc/{name}", "ro")
        container.with_env("HOME", "/tmp")
        container.with_kwargs(entrypoint=["sleep"], user=user, network="none")
        started.append(container)
        container.start()
        return container

    try:
        yield runner
    finally:
        for container in started:
            with contextlib.suppress(Exception):
                container.stop()
