"""A real systemd as PID 1 in a container, and the secretivex units installed in it.

``boot()`` starts the image ci/build-systemd-image.sh builds (Debian, systemd,
the agent at /usr/bin/secretivex, users alice/carol/dave/eve/mallory/nora and group
team) with only the privileges these machines allow (``--cap-add SYS_ADMIN``, no
``--privileged``, no network) and waits for ``systemctl is-system-running``.

Units come in two flavours, installed the same way and exercised by the same tests:
``packaged`` (packaging/systemd/) and ``nixos`` (what nixos-module/default.nix renders
through the evaluator stand-in in nixos-module/testing/, written as unit files the
way NixOS does, with ``wantedBy`` as .wants symlinks).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from nixunits import render_unit

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging" / "systemd"
EVAL_NIX = REPO / "nixos-module" / "testing" / "eval.nix"
REQUIRE_ALL = os.environ.get("SECRETIVEX_REQUIRE_ALL") == "1"
IMAGE = os.environ.get("SECRETIVEX_SYSTEMD_IMAGE", "secretivex-systemd:dev")
#: Where the image installs the agent; the NixOS flavour's "package" path.
PACKAGE = "/opt/secretivex"
UIDS = {"alice": 1000, "carol": 1001, "dave": 1002, "eve": 1003, "mallory": 1004, "nora": 1005}
FLAVOURS = ("packaged", "nixos")


def unavailable(reason: str) -> None:
    """Skip, or fail under SECRETIVEX_REQUIRE_ALL=1 (our CI)."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (SECRETIVEX_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


@dataclass
class Host:
    """One booted container; commands run through ``docker exec``."""

    container: DockerContainer
    #: which units the test module installed: "packaged" or "nixos"
    flavour: str = "packaged"

    def sh(
        self,
        script: str,
        user: str = "root",
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """``sh -c SCRIPT`` as ``user``, killed after ``timeout`` s (never hangs)."""
        argv = ["timeout", "-k", "5", str(int(timeout)), "sh", "-c", script]
        wrapped = self.container.get_wrapped_container()
        code, output = wrapped.exec_run(argv, user=user, environment=env or {}, demux=True)
        stdout, stderr = output if output is not None else (None, None)
        proc = subprocess.CompletedProcess(
            argv,
            int(code),
            (stdout or b"").decode(errors="replace"),
            (stderr or b"").decode(errors="replace"),
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"as {user}: {script}\nexit {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def user_sh(
        self, user: str, script: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """As ``user``, with the environment `systemctl --user` needs."""
        uid = UIDS[user]
        env = {
            "XDG_RUNTIME_DIR": f"/run/user/{uid}",
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path=/run/user/{uid}/bus",
            "HOME": f"/home/{user}",
        }
        return self.sh(script, user=user, env=env, check=check, timeout=timeout)

    def put(self, path: str, text: str, mode: int = 0o644, owner: int = 0, group: int = 0) -> None:
        """Write a file (parents must exist)."""
        data = text.encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, owner, group
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
        wrapped = self.container.get_wrapped_container()
        assert wrapped.put_archive(str(Path(path).parent), buf.getvalue())

    def wait_for(self, script: str, timeout: float = 30, user: str = "root") -> str:
        """Run ``script`` until it exits 0; its stdout."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.sh(script, user=user, check=False, timeout=timeout)
            if proc.returncode == 0:
                return proc.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {script}\n{proc.stdout}{proc.stderr}")
            time.sleep(0.2)

    def show(self, unit: str, *props: str, user: str | None = None) -> dict[str, str]:
        """`systemctl [--user] show -p ...` as a dict."""
        args = " ".join(f"-p {p}" for p in props)
        if user is None:
            out = self.sh(f"systemctl show {args} {unit}").stdout
        else:
            out = self.user_sh(user, f"systemctl --user show {args} {unit}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *filters: str) -> str:
        return self.sh(f"journalctl --no-pager -o cat {' '.join(filters)}").stdout


def boot(image: str = IMAGE) -> Host:
    """Start the image with systemd as PID 1 and wait until it is up."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image)
    container.with_volume_mapping("/sys/fs/cgroup", "/sys/fs/cgroup", "rw")
    container.with_tmpfs_mount("/run").with_tmpfs_mount("/run/lock")
    container.with_kwargs(cap_add=["SYS_ADMIN"], network="none")
    container.start()
    host = Host(container)
    try:
        # the bus appears a moment after PID 1 starts; then --wait blocks until booted
        deadline = time.monotonic() + 90
        while True:
            state = host.sh("systemctl is-system-running --wait", check=False, timeout=90)
            if state.stdout.strip() in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"systemd did not come up: {state.stdout}{state.stderr}")
            time.sleep(0.2)
        # On a host, every mount is shared (systemd makes them so at boot); Docker's
        # /run tmpfs is private, and then the credentials systemd stages in a child
        # mount namespace never reach the service (LoadCredential= files missing).
        host.sh("mount --make-rshared /")
    except BaseException:
        stop(host)
        raise
    return host


def stop(host: Host) -> None:
    """Remove the container and its anonymous volumes."""
    try:
        host.container.get_wrapped_container().remove(force=True, v=True)
    except Exception as exc:  # already gone
        print(f"removing container: {exc}", file=sys.stderr)


# ----------------------------------------------------------------- unit rendering


def nix_evaluate(secretivex: dict[str, Any], world: dict[str, Any] | None = None) -> Any:
    """The module evaluated through the stand-in, with the image's package path."""
    nix = shutil.which("nix-instantiate")
    if nix is None:
        unavailable("nix-instantiate not found (Debian: apt-get install nix-bin)")
        raise AssertionError("unreachable")
    scenario = json.dumps({"secretivex": secretivex, "world": world or {}})
    state = Path(os.environ.get("TMPDIR", "/tmp")) / f"sx-nix-state-{os.getuid()}"
    cmd = [
        nix,
        "--eval",
        "--strict",
        "--json",
        str(EVAL_NIX),
        "--argstr",
        "scenario",
        scenario,
        "--argstr",
        "packagePath",
        PACKAGE,
        "--argstr",
        "coreutilsPath",
        "/usr",
    ]
    env = {**os.environ, "NIX_STATE_DIR": str(state), "NIX_PATH": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["undeclared"] == [] and out["failedAssertions"] == [], out
    return out


def install_nixos_units(host: Host, units: dict[str, Any], directory: str, kind: str) -> list[str]:
    """Write NixOS unit definitions of one kind into ``directory`` and link their
    ``wantedBy`` targets as NixOS does; the unit file names."""
    names = []
    for name, unit in units.items():
        file = f"{name}.{kind}"
        host.put(f"{directory}/{file}", render_unit(kind, unit))
        for target in unit.get("wantedBy", []):
            host.sh(
                f"mkdir -p {directory}/{target}.wants && "
                f"ln -sf ../{file} {directory}/{target}.wants/{file}"
            )
        names.append(file)
    return names


def install_packaged(host: Host, files: list[Path], directory: str) -> None:
    host.sh(f"mkdir -p {directory}")
    for file in files:
        host.put(f"{directory}/{file.name}", file.read_text())


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started
