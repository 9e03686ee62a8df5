"""docs/kubernetes/*.yaml, checked offline: valid against the Kubernetes schema
(kubernetes-validate's bundled JSON schemas, strict: unknown fields fail), the agent's
securityContext matches the image (USER in the Dockerfile), and the embedded agent
config passes `secretivex config validate`. They are NOT applied to a cluster here."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import SECRETIVEX

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "docs" / "kubernetes").glob("*.yaml"))
#: The oldest release with native sidecars (initContainers restartPolicy: Always) GA'd
#: enough to rely on, and the newest schema the package ships.
VERSIONS = ("1.30.0", "latest")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def image_user() -> tuple[int, int]:
    """USER of the runtime stage (the last USER before the first ENTRYPOINT)."""
    text = (REPO / "Dockerfile").read_text()
    runtime = text.split("ENTRYPOINT", 1)[0]
    uid, gid = re.findall(r"^USER (\d+):(\d+)$", runtime, re.M)[-1]
    return int(uid), int(gid)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in ("Job", "DaemonSet", "Deployment", "StatefulSet"):
        return doc["spec"]["template"]["spec"]
    return None


def test_there_are_manifests() -> None:
    assert {p.name for p in MANIFESTS} >= {"sidecar.yaml", "daemonset.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", VERSIONS)
def test_valid_against_the_kubernetes_schema(path: Path, version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    for doc in documents(path):
        kubernetes_validate.validate(doc, wanted, strict=True)


def test_a_broken_manifest_is_caught() -> None:
    """The check can fail: a typo'd field is an error in strict mode."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = documents(REPO / "docs" / "kubernetes" / "sidecar.yaml")[1]
    doc["spec"]["template"]["spec"]["initContainers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_agent_security_context_matches_the_image(path: Path) -> None:
    uid, gid = image_user()
    agents = 0
    for doc in documents(path):
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, container["name"]
            assert context.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
            if not str(container["image"]).startswith("secretivex:"):
                continue
            agents += 1
            assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/run/secretivex"} <= mounts  # writable places it needs
            assert spec["securityContext"]["fsGroup"] == gid  # Secret keys readable
    assert agents == 1


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_embedded_config_validates_and_matches_the_clients(path: Path, tmp_path: Path) -> None:
    docs = documents(path)
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = tmp_path / "config.yaml"
    config.write_text(config_map["data"]["config.yaml"])
    result = subprocess.run(
        [SECRETIVEX, "config", "validate", "--no-path-checks", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout == "OK\n", result.stdout
    listeners = yaml.safe_load(config.read_text())["listeners"]
    sockets = {entry["socket"] for entry in listeners}
    peers = {uid for entry in listeners for uid in entry["peers"]["uids"]}
    for doc in docs:
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            if "SSH_AUTH_SOCK" in env:
                assert env["SSH_AUTH_SOCK"] in sockets
                uid = container.get("securityContext", {}).get("runAsUser") or spec[
                    "securityContext"
                ].get("runAsUser")
                assert uid in peers, (container["name"], uid, peers)
