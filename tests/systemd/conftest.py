"""Fixtures for tests/systemd: one booted systemd container per (module, flavour).

Skips without a Docker engine or the image (fails under SECRETIVEX_REQUIRE_ALL=1);
tests never build images (`make test` runs ci/build-systemd-image.sh first). Every
container is removed when its module is done, also on failure.
"""

from __future__ import annotations

import pytest
from sdlib import IMAGE, unavailable


@pytest.fixture(scope="session")
def systemd_image() -> str:
    from secretivex.testing import docker_problem

    problem = docker_problem()
    if problem is not None:
        unavailable(problem)
    import docker.errors
    from testcontainers.core.docker_client import DockerClient

    client = DockerClient()
    try:
        client.client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(
            f"image {IMAGE} not present: run ci/build-systemd-image.sh (after "
            "ci/build-image.sh); the systemd suite never builds images"
        )
    finally:
        client.client.close()
    return IMAGE
