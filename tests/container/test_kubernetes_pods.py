"""docs/kubernetes/*.yaml, run: there is no cluster here, so each pod is played by
Docker the way a kubelet sets it up. What Kubernetes does and Docker does not is done
by hand, from the manifest, as the kubelet does it:

- ``securityContext``: ``runAsUser``/``runAsGroup`` -> ``--user``, the pod's
  ``fsGroup`` -> a supplementary group of every container, ``readOnlyRootFilesystem``
  -> ``--read-only``, ``capabilities.drop: [ALL]`` -> ``--cap-drop ALL``,
  ``allowPrivilegeEscalation: false`` -> ``no-new-privileges``;
- ``emptyDir``: a directory of mode 0777 (``medium: Memory``: a tmpfs, whose root is
  1777); with ``fsGroup`` the kubelet gives it that group, group rw and setgid;
- ``secret``/``configMap``: the kubelet's atomic-writer layout (a timestamped
  directory, a ``..data`` link to it, one link per key), files of ``defaultMode`` and,
  with ``fsGroup``, that group;
- ``hostPath``: a host directory prepared as the manifest's comment says;
- probes: run with ``docker exec`` as the kubelet would, once.

The agent image runs unchanged, the job container is the agent image too (it has
``ssh-add``), with ``--network none``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from containerlib import DEV_IMAGE

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "docs" / "kubernetes"
FIXED_TIME = "..2026_01_01_00_00_00.000000001"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "Pod":
        spec: dict[str, Any] = doc["spec"]
        return spec
    spec = doc["spec"]["template"]["spec"]
    return spec


def atomic_writer(directory: Path, files: dict[str, bytes], mode: int, gid: int | None) -> None:
    """What the kubelet writes for a secret/configMap volume."""
    directory.mkdir(parents=True)
    data = directory / FIXED_TIME
    data.mkdir()
    for name, content in files.items():
        path = data / name
        path.write_bytes(content)
        os.chmod(path, mode)
        if gid is not None:
            os.chown(path, 0, gid)
    (directory / "..data").symlink_to(FIXED_TIME)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    os.chmod(directory, 0o1777 if gid is None else 0o3777)
    if gid is not None:
        os.chown(directory, 0, gid)


def empty_dir(path: Path, source: dict[str, Any], gid: int | None) -> None:
    path.mkdir(parents=True)
    mode = 0o1777 if source.get("medium") == "Memory" else 0o777
    if gid is not None:  # the kubelet's fsGroup ownership change: group, g+rw, setgid
        os.chown(path, 0, gid)
        mode |= 0o2070
    os.chmod(path, mode)


class Pod:
    """One pod's volumes on the host, and its containers as `docker run` arguments."""

    def __init__(self, spec: dict[str, Any], root: Path, files: dict[str, dict[str, bytes]]):
        self.spec = spec
        self.root = root
        self.fs_group: int | None = spec.get("securityContext", {}).get("fsGroup")
        self.volumes: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            name = volume["name"]
            path = root / name
            if "emptyDir" in volume:
                empty_dir(path, volume["emptyDir"], self.fs_group)
            elif "secret" in volume:
                mode = volume["secret"].get("defaultMode", 0o644)
                atomic_writer(path, files[volume["secret"]["secretName"]], mode, self.fs_group)
            elif "configMap" in volume:
                atomic_writer(path, files[volume["configMap"]["name"]], 0o644, self.fs_group)
            elif "hostPath" in volume:
                path = Path(volume["hostPath"]["path"])  # the caller prepared it
            else:
                raise AssertionError(f"volume kind not emulated: {volume}")
            self.volumes[name] = path
        self.names: list[str] = []

    def docker_args(self, container: dict[str, Any]) -> list[str]:
        pod_ctx = self.spec.get("securityContext", {})
        ctx = {**pod_ctx, **container.get("securityContext", {})}
        args = ["--network", "none"]
        if "runAsUser" in ctx:
            args += ["--user", f"{ctx['runAsUser']}:{ctx.get('runAsGroup', 0)}"]
        if self.fs_group is not None:
            args += ["--group-add", str(self.fs_group)]
        if ctx.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if "ALL" in ctx.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", "ALL"]
        if ctx.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for mount in container.get("volumeMounts", []):
            suffix = ":ro" if mount.get("readOnly") else ""
            args += ["-v", f"{self.volumes[mount['name']]}:{mount['mountPath']}{suffix}"]
        for env in container.get("env", []):
            args += ["-e", f"{env['name']}={env['value']}"]
        return args

    def start(self, container: dict[str, Any], name: str) -> str:
        """A long-running container (the agent); the image's entrypoint, the args."""
        cname = f"sx-k8s-{name}-{os.getpid()}-{len(self.names)}"
        argv = ["docker", "run", "-d", "--name", cname, *self.docker_args(container)]
        argv += [DEV_IMAGE, *container.get("args", [])]
        subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120)
        self.names.append(cname)
        return cname

    def run(
        self, container: dict[str, Any], command: list[str], **overrides: Any
    ) -> subprocess.CompletedProcess[str]:
        """A job container running ``command`` to completion."""
        spec = {**container, **overrides}
        argv = ["docker", "run", "--rm", *self.docker_args(spec), "--entrypoint", command[0]]
        argv += [DEV_IMAGE, *command[1:]]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def probe(self, cname: str, probe: dict[str, Any], deadline_s: float = 60) -> str:
        """The exec probe until it succeeds (generous bound, never a timing check)."""
        end = time.monotonic() + deadline_s
        while True:
            proc = subprocess.run(
                ["docker", "exec", cname, *probe["exec"]["command"]],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if proc.returncode == 0:
                return proc.stdout
            if time.monotonic() > end:
                logs = subprocess.run(["docker", "logs", cname], capture_output=True, text=True)
                raise AssertionError(f"probe failed: {proc.stdout}{proc.stderr}\n{logs.stderr}")
            time.sleep(0.5)

    def logs(self, cname: str) -> str:
        proc = subprocess.run(["docker", "logs", cname], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        for cname in self.names:
            subprocess.run(["docker", "rm", "-f", "-v", cname], capture_output=True)


def ci_key(tmp: Path) -> tuple[bytes, str]:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci-deploy", "-f", str(tmp / "k")],
        check=True,
    )
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp / "k.pub")], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    return (tmp / "k").read_bytes(), fingerprint


@pytest.fixture
def pod_root(docker_ready: None, tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("emulating the kubelet's volume ownership needs root")
    root = tmp_path / "pod"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o755)
    yield root


def test_sidecar_job_signs_through_its_listener(pod_root: Path, tmp_path: Path) -> None:
    config_map, job = documents("sidecar.yaml")
    spec = pod_spec(job)
    key, fingerprint = ci_key(tmp_path)
    files = {
        config_map["metadata"]["name"]: {"config.yaml": config_map["data"]["config.yaml"].encode()},
        "secretivex-keys": {"ci-deploy": key},  # kubectl create secret ... --from-file=ci-deploy
    }
    pod = Pod(spec, pod_root, files)
    try:
        (agent,) = spec["initContainers"]
        (container,) = spec["containers"]
        cname = pod.start(agent, "sidecar")
        ready = pod.probe(cname, agent["startupProbe"])
        assert "ready" in ready, ready
        # the job: as the manifest runs it (its image has git; this one only ssh-add)
        listed = pod.run(container, ["ssh-add", "-l"])
        assert listed.returncode == 0, listed.stdout + listed.stderr + pod.logs(cname)
        assert fingerprint in listed.stdout
        # another uid in the pod (same fsGroup) is refused by the listener's peers
        other = pod.run(
            container,
            ["ssh-add", "-l"],
            securityContext={**container["securityContext"], "runAsUser": 1001},
        )
        assert other.returncode != 0, other.stdout
        assert "Traceback" not in pod.logs(cname)
    finally:
        pod.remove()


def test_sidecar_needs_the_memory_emptydir(pod_root: Path, tmp_path: Path) -> None:
    """A disk emptyDir is 0777 without the sticky bit: the agent refuses to put its
    socket there (anyone could replace it), and the manifest says so."""
    config_map, job = documents("sidecar.yaml")
    spec = pod_spec(job)
    for volume in spec["volumes"]:
        if volume["name"] == "run":
            assert volume["emptyDir"] == {"medium": "Memory"}
            volume["emptyDir"] = {}
    key, _ = ci_key(tmp_path)
    files = {
        config_map["metadata"]["name"]: {"config.yaml": config_map["data"]["config.yaml"].encode()},
        "secretivex-keys": {"ci-deploy": key},
    }
    pod = Pod(spec, pod_root, files)
    try:
        cname = pod.start(spec["initContainers"][0], "sidecar-disk")
        deadline = time.monotonic() + 60
        while (
            "Up"
            in subprocess.run(
                ["docker", "ps", "-a", "--filter", f"name={cname}", "--format", "{{.Status}}"],
                capture_output=True,
                text=True,
            ).stdout
        ):
            assert time.monotonic() < deadline, "the agent kept running on a 0777 directory"
            time.sleep(0.5)
        logs = pod.logs(cname)
        assert "without the sticky bit" in logs, logs
        assert "medium: Memory" in (MANIFESTS / "sidecar.yaml").read_text()
    finally:
        pod.remove()


def test_daemonset_node_agent_serves_the_job_pod(pod_root: Path, tmp_path: Path) -> None:
    config_map, daemonset, job_pod = documents("daemonset.yaml")
    spec = pod_spec(daemonset)
    key, fingerprint = ci_key(tmp_path)
    # the node directory, as the manifest's comment prepares it (d ... 0755 10001 10001);
    # the hostPath is moved under the test's directory
    node_dir = pod_root / "node-run"
    node_dir.mkdir()
    os.chown(node_dir, 10001, 10001)
    os.chmod(node_dir, 0o755)
    assert "d /run/secretivex 0755 10001 10001" in (MANIFESTS / "daemonset.yaml").read_text()
    for s in (spec, pod_spec(job_pod)):
        for volume in s["volumes"]:
            if "hostPath" in volume:
                assert volume["hostPath"]["path"] == "/run/secretivex"
                volume["hostPath"]["path"] = str(node_dir)
    files = {
        config_map["metadata"]["name"]: {"config.yaml": config_map["data"]["config.yaml"].encode()},
        "secretivex-keys": {"ci-deploy": key},
    }
    pod = Pod(spec, pod_root / "agent", files)
    job = Pod(pod_spec(job_pod), pod_root / "job", {})
    try:
        (agent,) = spec["containers"]
        (container,) = pod_spec(job_pod)["containers"]
        for restart in range(2):  # a restarted agent pod finds its old sockets there
            cname = pod.start(agent, f"node{restart}")
            pod.probe(cname, agent["livenessProbe"])
            listed = job.run(container, container["command"])
            assert listed.returncode == 0, listed.stdout + listed.stderr + pod.logs(cname)
            assert fingerprint in listed.stdout
            subprocess.run(["docker", "stop", "-t", "10", cname], capture_output=True, check=True)
            assert "Traceback" not in pod.logs(cname)
    finally:
        pod.remove()
        shutil.rmtree(node_dir, ignore_errors=True)
