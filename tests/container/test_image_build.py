"""Image-level checks: the Dockerfile targets, the entrypoints and the ci/ scripts.

These drive the docker CLI directly (the testcontainers suite covers the scenarios
around the agent). Images come from ``make image``; when missing they are built with
``ci/build-image.sh --no-deps``. Without a Docker engine the tests skip, or fail when
``SECRETIVEX_REQUIRE_ALL=1``. Every container started here carries a label and is
removed at the end, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("SECRETIVEX_TEST_IMAGE", "secretivex:dev")
SOFTHSM_IMAGE = os.environ.get("SECRETIVEX_TEST_SOFTHSM_IMAGE", "secretivex:softhsm")
RUN_LABEL = f"secretivex.test.run={uuid.uuid4().hex[:12]}"
AGENT_UID = 10001
T = TypeVar("T")

SCRIPTS = [
    "ci/install-system-deps.sh",
    "ci/docker-engine.sh",
    "ci/base-image.sh",
    "ci/build-image.sh",
    "docker/entrypoint.sh",
    "docker/healthcheck.sh",
    "docker/softhsm-init.sh",
]


def _unavailable(reason: str) -> None:
    if os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (SECRETIVEX_REQUIRE_ALL=1)")
    pytest.skip(reason)


def docker(
    *args: str, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _image_exists(ref: str) -> bool:
    return docker("image", "inspect", ref).returncode == 0


@pytest.fixture(scope="session")
def engine() -> Iterator[None]:
    if shutil.which("docker") is None:
        _unavailable("docker CLI not installed (ci/install-system-deps.sh --only docker)")
    if docker("info", timeout=30).returncode != 0:
        _unavailable("no Docker engine answers (ci/docker-engine.sh starts one)")
    yield
    stale = docker("ps", "-aq", "--filter", f"label={RUN_LABEL}").stdout.split()
    if stale:
        docker("rm", "-f", "-v", *stale)


@pytest.fixture(scope="session")
def images(engine: None) -> None:
    if all(_image_exists(ref) for ref in (IMAGE, SOFTHSM_IMAGE)):
        return
    if IMAGE != "secretivex:dev" or SOFTHSM_IMAGE != "secretivex:softhsm":
        _unavailable(f"{IMAGE} / {SOFTHSM_IMAGE} not present")
    result = subprocess.run(
        [str(REPO / "ci/build-image.sh"), "--no-deps"],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO,
    )
    if result.returncode != 0:
        pytest.fail(f"ci/build-image.sh failed:\n{result.stderr[-4000:]}")


@contextlib.contextmanager
def container(*run_args: str, image: str = IMAGE) -> Iterator[str]:
    """``docker run -d`` with our label; always removed (with anonymous volumes)."""
    started = docker("run", "-d", "--label", RUN_LABEL, *run_args, image, timeout=60)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    try:
        yield cid
    finally:
        docker("rm", "-f", "-v", cid)


def run_once(
    *command: str, opts: tuple[str, ...] = (), image: str = IMAGE, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``docker run --rm --network none OPTS IMAGE COMMAND...`` in the foreground."""
    return docker(
        "run",
        "--rm",
        "--label",
        RUN_LABEL,
        "--network",
        "none",
        *opts,
        image,
        *command,
        timeout=timeout,
    )


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str | Callable[[], str],
    interval: float = 0.2,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout}s waiting for {what() if callable(what) else what}"
            )
        time.sleep(interval)


def ssh_add(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
    return subprocess.run(["ssh-add", *args], capture_output=True, text=True, env=env, timeout=15)


def health(cid: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", cid).stdout.strip()


def logs(cid: str) -> str:
    out = docker("logs", cid)
    return out.stdout + out.stderr


def socket_dir(tmp_path: Path, name: str = "run") -> Path:
    path = tmp_path / name
    path.mkdir()
    os.chown(path, AGENT_UID, AGENT_UID)
    tmp_path.chmod(0o755)
    return path


def _package_version() -> str:
    import tomllib

    with (REPO / "pyproject.toml").open("rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_shellcheck_clean(script: str) -> None:
    if shutil.which("shellcheck") is None:
        _unavailable("shellcheck not installed (ci/install-system-deps.sh --only lint)")
    result = subprocess.run(
        ["shellcheck", str(REPO / script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_install_system_deps_lists_groups() -> None:
    script = str(REPO / "ci/install-system-deps.sh")
    listed = subprocess.run(
        [script, "--list", "--only", "softhsm,docker"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listed == ["softhsm2", "opensc", "docker.io", "debootstrap"]
    bad = subprocess.run([script, "--skip", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown group: nope" in bad.stderr


# --------------------------------------------------------------------------- image


@pytest.mark.container
def test_image_metadata(images: None) -> None:
    fmt = (
        "{{.Config.User}}|{{json .Config.Volumes}}|{{json .Config.Env}}|"
        "{{json .Config.Healthcheck.Test}}|{{json .Config.Entrypoint}}|"
        '{{index .Config.Labels "org.opencontainers.image.version"}}'
    )
    user, volumes, env, healthcheck, entrypoint, version = (
        docker("image", "inspect", "-f", fmt, IMAGE, check=True).stdout.strip().split("|")
    )
    assert user == f"{AGENT_UID}:{AGENT_UID}"
    assert "/run/secretivex" in volumes
    assert "SSH_AUTH_SOCK=/run/secretivex/agent.sock" in env
    assert "secretivex-healthcheck" in healthcheck
    assert "tini" in entrypoint
    assert version == _package_version()


@pytest.mark.container
def test_version_and_non_root_user(images: None) -> None:
    version = run_once("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"secretivex {_package_version()}"
    ident = run_once("id", "-u", image=SOFTHSM_IMAGE)
    assert ident.stdout.strip() == str(AGENT_UID)
    no_pip = run_once("sh", "-c", "test ! -e /opt/secretivex/bin/pip")
    assert no_pip.returncode == 0


@pytest.mark.container
def test_unwritable_socket_dir_is_a_clear_startup_error(images: None, tmp_path: Path) -> None:
    root_owned = tmp_path / "root-owned"
    root_owned.mkdir(mode=0o755)
    result = run_once(opts=("-v", f"{root_owned}:/run/secretivex"))
    assert result.returncode == 2
    assert "not writable by uid 10001" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.container
def test_missing_socket_dir_is_a_clear_startup_error(images: None) -> None:
    result = run_once(opts=("-e", "SSH_AUTH_SOCK=/nonexistent/agent.sock"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.container
def test_invalid_config_exits_non_zero_with_the_problem(images: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("agent:\n  no_such_key: 1\n")
    config.chmod(0o644)
    tmp_path.chmod(0o755)
    run_dir = socket_dir(tmp_path)
    result = run_once(
        opts=("-v", f"{run_dir}:/run/secretivex", "-v", f"{config}:/etc/secretivex/config.yaml:ro")
    )
    assert result.returncode != 0
    assert "no_such_key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.container
def test_agent_socket_health_and_clean_stop(images: None, tmp_path: Path) -> None:
    run_dir = socket_dir(tmp_path)
    sock = run_dir / "agent.sock"
    with container(
        "--network",
        "none",
        "-v",
        f"{run_dir}:/run/secretivex",
        "--health-interval",
        "1s",
        "--health-timeout",
        "8s",
        "--health-retries",
        "1",
    ) as cid:
        wait_for(sock.is_socket, 30, lambda: f"{sock} (logs: {logs(cid)[-2000:]})")
        listed = ssh_add(sock, "-l")
        assert listed.returncode in (0, 1), listed.stderr  # answered: identities or none
        wait_for(lambda: health(cid) == "healthy", 30, "healthy")

        # The agent stops answering (SIGSTOP): the healthcheck must turn unhealthy.
        stopped = docker("exec", cid, "sh", "-c", "kill -STOP $(cat /proc/1/task/1/children)")
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: health(cid) == "unhealthy", 40, "unhealthy", interval=0.5)
        docker("exec", cid, "sh", "-c", "kill -CONT $(cat /proc/1/task/1/children)", check=True)

        # SIGTERM through tini: a prompt, clean exit, then clients fail fast.
        began = time.monotonic()
        docker("stop", "--time", "20", cid, timeout=40, check=True)
        assert time.monotonic() - began < 15, "agent did not exit on SIGTERM (needed SIGKILL)"
        exit_code = docker("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip()
        assert exit_code == "0", logs(cid)[-2000:]
        after = ssh_add(sock, "-l")
        assert after.returncode == 2


@pytest.mark.container
@pytest.mark.softhsm
def test_softhsm_target_generates_keys_and_keeps_them_across_restart(
    images: None, tmp_path: Path
) -> None:
    run_dir = socket_dir(tmp_path)
    sock = run_dir / "agent.sock"
    volume = f"secretivex-test-tokens-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", "--label", RUN_LABEL, volume, check=True)
    try:
        with container(
            "--network",
            "none",
            "-v",
            f"{run_dir}:/run/secretivex",
            "-v",
            f"{volume}:/var/lib/secretivex/tokens",
            "-e",
            "SECRETIVEX_TOKEN_LABEL=ci",
            "-e",
            "SECRETIVEX_TOKEN_PIN=1234",
            "-e",
            "SECRETIVEX_GENERATE_KEYS=ed25519 p256=ci-p256 rsa3072",
            image=SOFTHSM_IMAGE,
        ) as cid:

            def identities() -> list[str] | None:
                if not sock.is_socket():
                    return None
                out = ssh_add(sock, "-L")
                return sorted(out.stdout.splitlines()) if out.returncode == 0 else None

            before = wait_for(identities, 60, lambda: f"identities (logs: {logs(cid)[-2000:]})")
            kinds = sorted(line.split()[0] for line in before)
            assert kinds == ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"], before

            docker("restart", "--time", "20", cid, timeout=60, check=True)
            after = wait_for(identities, 60, lambda: f"identities after restart: {logs(cid)}")
            assert after == before
            assert "reusing token" in logs(cid)
    finally:
        docker("volume", "rm", "-f", volume)


@pytest.mark.container
@pytest.mark.softhsm
def test_softhsm_target_runs_as_the_host_user(images: None) -> None:
    """``--user UID:GID`` makes the socket the host user's: no listener, no chmod."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        _unavailable("needs root and setpriv to act as another host user")
    uid = gid = 4242
    # Not under tmp_path: the host user must be able to reach the socket (its parents
    # there are root-only).
    run_dir = Path(tempfile.mkdtemp(prefix="secretivex-test-"))
    run_dir.chmod(0o755)
    os.chown(run_dir, uid, gid)
    cleanup = contextlib.ExitStack()
    cleanup.callback(shutil.rmtree, run_dir, ignore_errors=True)
    sock = run_dir / "agent.sock"
    with cleanup, container(
        "--network", "none", "--user", f"{uid}:{gid}", "-v", f"{run_dir}:/run/secretivex",
        "-e", "SECRETIVEX_GENERATE_KEYS=ed25519",
        image=SOFTHSM_IMAGE,
    ) as cid:  # fmt: skip

        def listed_as_user() -> str | None:
            out = subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                 "env", f"SSH_AUTH_SOCK={sock}", "ssh-add", "-l"],
                capture_output=True, text=True, timeout=15,
            )  # fmt: skip
            return out.stdout if out.returncode == 0 else None

        listed = wait_for(listed_as_user, 60, lambda: f"identities as uid {uid}: {logs(cid)}")
        assert "(ED25519)" in listed
        assert sock.stat().st_uid == uid
        assert "ephemeral token" in logs(cid)
