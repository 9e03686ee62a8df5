"""Attacking a host agent from inside a container that was given one socket.

The setup is docs/containers.md's "Serving a CI-runner container from a host agent":
a host agent (running as root, so that it can chown) with a listener owned by the
runner's uid, ``peers`` admitting it, a ``keys`` scope and ``allow_add: false``, in a
directory of its own mounted read-only into a ``--network none`` container running as
uid 1000. Two variants sit beside it: the same listener with ``allow_add: true``, and
the GitHub Actions "root-but-scoped" listener (owner 0, the job runs as root).

Each test is the attacker's session inside the container, with real peers (ssh-add,
ssh-keygen, and ``attack/agentctl.py``, a hand-written agent client speaking raw
frames), and asserts what the host agent must do. One agent and one container serve
the whole module; tests that need to restart or reload an agent start their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from containerlib import DEV_IMAGE, RUNNER_GID, RUNNER_UID, container_exec
from harness import AgentProcess, keygen, start_agent, wait_for_socket, wait_until

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

pytestmark = pytest.mark.container

CI = "/run/secretivex-ci"  # the recipe's listener directory, mounted read-only
GHA = "/run/secretivex-gha"  # the GitHub Actions root-but-scoped listener
MISCONF = "/run/misconfigured"  # a listener directory mounted read-write (a mistake)
TOOLS = "/attack"
CTL = f"python3 {TOOLS}/agentctl.py"
RUNNER = f"{RUNNER_UID}:{RUNNER_GID}"
MAX_CONNECTIONS = 64


class Lab:
    """The host side: keys, the agent, its audit log, the directories shared."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.ci = root / "ci"
        self.gha = root / "gha"
        self.misconf = root / "misconf"
        self.tools = root / "tools"
        self.audit_path = root / "audit.jsonl"
        self.agent: AgentProcess | None = None

    @property
    def host(self) -> AgentProcess:
        assert self.agent is not None
        return self.agent

    def audit(self) -> list[dict[str, object]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def pub(self, name: str) -> str:
        return (self.keys / f"{name}.pub").read_text().strip()


def _listener(path: Path, owner: int, *, allow_add: bool = False, mode: str = "0660") -> str:
    peers = f"    peers: {{uids: [{owner}]}}\n" if owner else ""
    return (
        f"  - socket: {path}\n"
        f'    mode: "{mode}"\n'
        f"    owner: {owner}\n"
        f"    group: {owner and RUNNER_GID}\n"
        f'    keys: ["comment:ci-*"]\n'
        f"{peers}"
        f"    allow_add: {'true' if allow_add else 'false'}\n"
    )


@pytest.fixture(scope="module")
def lab(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("attack-lab"))
    lab.keys.mkdir(mode=0o700)
    keygen(lab.keys, "ci_deploy", comment="ci-deploy")
    keygen(lab.keys, "personal", comment="alice@laptop")
    for directory in (lab.ci, lab.gha, lab.misconf, lab.tools):
        directory.mkdir()
        directory.chmod(0o755)
    shutil.copy(Path(__file__).with_name("attack") / "agentctl.py", lab.tools)
    # The attacker knows the owner's public keys (they are public): give it both.
    for name in ("ci_deploy", "personal"):
        shutil.copy(lab.keys / f"{name}.pub", lab.tools)
    for path in lab.tools.iterdir():
        path.chmod(0o644)
    config = lab.root / "agent.yaml"
    config.write_text(
        f"agent:\n  max_connections: {MAX_CONNECTIONS}\n  frame_timeout_ms: 1500\n"
        f"stores:\n  - type: file\n    paths: [{lab.keys}]\n"
        "listeners:\n"
        + _listener(lab.ci / "agent.sock", RUNNER_UID)
        + _listener(lab.ci / "add.sock", RUNNER_UID, allow_add=True)
        + _listener(lab.gha / "agent.sock", 0, mode="0600")
        + f"audit:\n  path: {lab.audit_path}\n"
    )
    lab.agent = start_agent(lab.root, "--config", str(config))
    try:
        for sock in (lab.ci / "agent.sock", lab.gha / "agent.sock"):
            wait_for_socket(sock, proc=lab.agent.proc)
        yield lab
    finally:
        lab.agent.stop()


@pytest.fixture(scope="module")
def runner(lab: Lab, runner_accounts: dict[str, Path]) -> Iterator[DockerContainer]:
    """The recipe's runner: uid 1000, no network, the listener directory read-only.

    It also mounts the root-but-scoped listener (GitHub Actions recipe) and one
    directory read-write, as an operator who forgot ``:ro`` would.
    """
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(DEV_IMAGE, command="infinity")
    container.with_volume_mapping(str(lab.ci), CI, "ro")
    container.with_volume_mapping(str(lab.gha), GHA, "ro")
    container.with_volume_mapping(str(lab.misconf), MISCONF, "rw")
    container.with_volume_mapping(str(lab.tools), TOOLS, "ro")
    for name, path in runner_accounts.items():
        container.with_volume_mapping(str(path), f"/etc/{name}", "ro")
    container.with_env("HOME", "/tmp")
    container.with_env("SSH_AUTH_SOCK", f"{CI}/agent.sock")
    container.with_kwargs(entrypoint=["sleep"], user=RUNNER, network="none")
    container.start()
    try:
        yield container
    finally:
        container.stop()


@pytest.fixture
def sh(runner: DockerContainer) -> Callable[..., object]:
    def run_in(script: str, user: str = RUNNER) -> subprocess.CompletedProcess[str]:
        return container_exec(runner, script, user=user)

    return run_in


def _owner_lists_everything(lab: Lab) -> None:
    listed = lab.host.ssh_add("-l", check=False)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[2] for line in listed.stdout.splitlines()) == [
        "alice@laptop",
        "ci-deploy",
    ]


# --- keys outside the scope ---------------------------------------------------------


def test_keys_outside_the_scope_cannot_be_listed_or_used_by_blob(lab: Lab, sh) -> None:
    listed = sh("ssh-add -L")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == lab.pub("ci_deploy")

    # The attacker has the owner's public key (it is public) and asks by blob.
    assert sh(f"{CTL} {CI}/agent.sock sign {TOOLS}/personal.pub").stdout.strip() == "failure"
    assert sh(f"{CTL} {CI}/agent.sock sign {TOOLS}/ci_deploy.pub").stdout.strip() == "signature"
    refused = sh(
        f"cd /tmp && echo x > d && ssh-keygen -Y sign -q -n file -f {TOOLS}/personal.pub d"
    )
    assert refused.returncode != 0
    scoped = [r for r in lab.audit() if r["outcome"] == "scope_denied"]
    assert scoped and all(r["peer_uid"] == RUNNER_UID for r in scoped)


# --- key management -----------------------------------------------------------------


def test_key_management_is_refused_and_the_owner_keeps_their_keys(lab: Lab, sh) -> None:
    for sock in ("agent.sock", "add.sock"):
        env = f"SSH_AUTH_SOCK={CI}/{sock}"
        # Remove the owner's keys, one or all.
        sh(f"{env} ssh-add -d {TOOLS}/ci_deploy.pub; {env} ssh-add -D")
        _owner_lists_everything(lab)
        # Lock the agent for everyone, then try the owner's passphrase.
        assert sh(f"{env} ssh-add -x </dev/null", user="0:0").returncode != 0
        locked = sh(f"printf 'guess\\n' | SSH_ASKPASS_REQUIRE=never {env} ssh-add -X")
        assert locked.returncode != 0
        _owner_lists_everything(lab)
    outcomes = {(r["request"], r["outcome"]) for r in lab.audit()}
    assert ("lock", "lock_refused") in outcomes
    assert ("remove_all", "add_refused") in outcomes  # allow_add: false


def test_a_pkcs11_path_from_the_container_is_never_loaded_by_the_host(lab: Lab, sh) -> None:
    """ssh-add -s names a path; the agent would resolve it on the HOST's filesystem.

    The path named exists on the host (SoftHSM's module, inside pkcs11_allowlist): a
    container that could get it loaded could also name any other host library.
    """
    module = "/usr/lib/softhsm/libsofthsm2.so"
    for sock in ("agent.sock", "add.sock"):
        env = f"SSH_AUTH_SOCK={CI}/{sock}"
        added = sh(f"echo 1234 | SSH_ASKPASS_REQUIRE=never {env} ssh-add -s {module}")
        assert added.returncode != 0
        assert sh(f"{env} ssh-add -e {module}").returncode != 0
    maps = Path(f"/proc/{lab.host.proc.pid}/maps").read_text()
    assert "softhsm" not in maps and "pkcs11" not in maps.lower()
    refused = [r for r in lab.audit() if r["request"] in ("add_smartcard", "remove_smartcard")]
    assert refused and all(r["outcome"] != "ok" for r in refused)


def test_keys_added_by_the_container_stay_in_the_container(lab: Lab, sh) -> None:
    """Through the allow_add listener it may add its own key, restricted to a host key
    it chose; that key never reaches another socket and does not change the owner's."""
    env = f"SSH_AUTH_SOCK={CI}/add.sock"
    made = sh(
        "cd /tmp && rm -f own own.pub host host.pub"
        " && ssh-keygen -q -t ed25519 -N '' -C ci-own -f own"
        " && ssh-keygen -q -t ed25519 -N '' -C host -f host"
        " && printf 'evil.example %s\\n' \"$(cat host.pub)\" > kh"
        f" && {env} ssh-add -H /tmp/kh -h evil.example own"
    )
    assert made.returncode == 0, made.stderr
    mine = sh(f"{env} ssh-add -l")
    assert "ci-own" in mine.stdout
    # Not on the recipe's other listener, not among the owner's keys but on main only.
    assert "ci-own" not in sh("ssh-add -l").stdout
    # Re-adding the owner's served key with a constraint the container chooses: refused.
    readd = sh(f"cp {TOOLS}/ci_deploy.pub /tmp/x.pub; {env} ssh-add -h evil.example /tmp/x.pub")
    assert readd.returncode != 0
    assert sh(f"{CTL} {CI}/agent.sock sign {TOOLS}/ci_deploy.pub").stdout.strip() == "signature"
    sh(f"{env} ssh-add -D")
    assert "ci-own" not in lab.host.ssh_add("-l", check=False).stdout


# --- extensions and session binding ------------------------------------------------------


def test_extensions_and_session_binds_from_the_container(lab: Lab, sh) -> None:
    sock = f"{CI}/agent.sock"
    assert sh(f"{CTL} {sock} forged-bind").stdout.strip() in ("failure", "ext-failure")
    # A valid bind to a host key the container owns changes nothing about the scope.
    own = sh(f"{CTL} {sock} own-bind {TOOLS}/personal.pub").stdout.split()
    assert own == ["success", "failure"]
    for name, payload in (("query", ""), ("no-such@example.com", "00"), ("x" * 200, "")):
        reply = sh(f"{CTL} {sock} ext '{name}' {payload}").stdout.strip()
        assert reply in ("ext-response", "failure", "ext-failure"), (name, reply)
    assert sh(f"{CTL} {sock} sign {TOOLS}/ci_deploy.pub").stdout.strip() == "signature"
    _owner_lists_everything(lab)


# --- resources ---------------------------------------------------------------------


@contextlib.contextmanager
def _holding(sh, sock: str, count: int, user: str) -> Iterator[int]:
    out = f"/tmp/hold-{uuid.uuid4().hex[:6]}"
    sh(f"nohup {CTL} {sock} hold {count} {out} >/dev/null 2>&1 & echo $! > {out}.pid", user=user)
    try:
        deadline = time.monotonic() + 30
        while (got := sh(f"cat {out} 2>/dev/null", user=user)).stdout.strip() == "":
            assert time.monotonic() < deadline, "holder never reported"
            time.sleep(0.2)
        yield int(got.stdout)
    finally:
        sh(f"kill $(cat {out}.pid)", user=user)


def test_many_connections_from_the_runner_leave_the_owner_served(lab: Lab, sh) -> None:
    with _holding(sh, f"{CI}/agent.sock", MAX_CONNECTIONS + 8, RUNNER) as served:
        assert served == MAX_CONNECTIONS // 4  # agent.max_connections_per_uid default
        _owner_lists_everything(lab)


def test_root_in_a_runner_cannot_lock_the_owner_out(lab: Lab, sh) -> None:
    """GitHub Actions recipe: the job runs as root, the host agent runs as root. The
    container's uid 0 is the agent's own uid, but on a listener it must not take the
    slots reserved for the owner's main socket."""
    with _holding(sh, f"{GHA}/agent.sock", MAX_CONNECTIONS + 8, "0:0") as served:
        _owner_lists_everything(lab)
        assert served <= MAX_CONNECTIONS // 4  # held to the per-uid cap, like uid 1000


def test_huge_and_slow_frames_are_cut_off(lab: Lab, sh) -> None:
    sock = f"{CI}/agent.sock"
    assert sh(f"{CTL} {sock} huge-frame").stdout.strip() == "closed"
    took = sh(f"{CTL} {sock} slow-frame").stdout.strip()
    assert took != "never" and float(took) < 5, took  # frame_timeout_ms: 1500
    log = lab.host.log()
    assert "declared frame length 4294967280 is not in" in log
    assert "(uid=1000): frame not finished within 1.5s" in log
    _owner_lists_everything(lab)


# --- who the agent thinks it is talking to -------------------------------------------


def test_root_in_the_runner_is_confined_to_the_scope(lab: Lab, sh) -> None:
    as_root = sh("ssh-add -l", user="0:0")
    assert as_root.returncode == 0, as_root.stderr
    assert [line.split()[2] for line in as_root.stdout.splitlines()] == ["ci-deploy"]


def test_audit_names_the_container_process_truthfully(lab: Lab, sh) -> None:
    """SO_PEERCRED's pid is translated into the agent's pid namespace: the audit record
    names the host pid of the container's ssh-add, and says it runs in another mount
    namespace, so ``/usr/bin/ssh-add`` is not mistaken for the host's binary."""
    before = len(lab.audit())
    with _holding(sh, f"{CI}/agent.sock", 1, RUNNER) as served:
        assert served == 1
        record = lab.audit()[before]
        assert record["request"] == "list"
        assert record["peer_uid"] == RUNNER_UID
        pid = int(str(record["peer_pid"]))
        # The host's pid of the container's python: alive, in another pid namespace.
        assert Path(f"/proc/{pid}").exists()
        assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
        namespace = os.readlink(f"/proc/{pid}/ns/mnt")
    # /proc/PID/exe of a containerised process names the path inside the container,
    # here the same as a host binary's: the record must not pass for the host's file.
    assert record["peer_exe"] == f"/usr/bin/python3.11 (in mount namespace {namespace})"


def test_a_user_namespace_does_not_make_the_runner_root(lab: Lab, docker_ready: None) -> None:
    """Where user namespaces are allowed (here: seccomp=unconfined), uid 0 inside one
    is still uid 1000 to the agent: SO_PEERCRED maps into the agent's namespace."""
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(DEV_IMAGE, command="infinity")
    container.with_volume_mapping(str(lab.ci), CI, "ro")
    container.with_volume_mapping(str(lab.tools), TOOLS, "ro")
    container.with_kwargs(
        entrypoint=["sleep"], user=RUNNER, network="none", security_opt=["seccomp=unconfined"]
    )
    container.start()
    try:
        whoami = container_exec(container, "unshare -U -r id -u")
        assert whoami.stdout.strip() == "0", whoami.stderr
        before = len(lab.audit())
        # As "root": the add.sock listener admits uid 1000 only... and root. Not this root.
        listed = container_exec(container, f"unshare -U -r {CTL} {CI}/agent.sock list", env={})
        assert listed.stdout.split() == ["ci-deploy"], listed.stderr
        records = lab.audit()[before:]
        assert records and all(r["peer_uid"] == RUNNER_UID for r in records)
    finally:
        container.stop()


# --- the socket directory -------------------------------------------------------------


def test_the_read_only_directory_cannot_be_changed_even_by_root(lab: Lab, sh) -> None:
    for user in (RUNNER, "0:0"):
        for attempt in (
            f"rm -f {CI}/agent.sock",
            f"mv {CI}/agent.sock {CI}/old",
            f"ln -s /etc/shadow {CI}/new.sock",
            f"touch {CI}/agent.sock.lock",
        ):
            done = sh(attempt, user=user)
            assert done.returncode != 0, (user, attempt)
            assert "Read-only file system" in done.stderr, done.stderr
    assert stat.S_ISSOCK((lab.ci / "agent.sock").lstat().st_mode)
    assert sorted(p.name for p in lab.ci.iterdir()) == ["add.sock", "agent.sock"]


def test_a_symlink_planted_in_a_writable_directory_is_not_followed_on_reload(
    lab: Lab, sh, tmp_path: Path
) -> None:
    """An operator mounted the listener directory read-write; root in the container
    replaces the socket with a symlink to a host file. The next reload that changes the
    listener's mode or owner must not chmod/chown the host file through it."""
    victim = tmp_path / "victim"
    victim.write_text("host secret\n")
    victim.chmod(0o600)
    before = victim.stat()
    sock = lab.misconf / "agent.sock"
    config = tmp_path / "agent.yaml"

    def write_config(mode: str) -> None:
        config.write_text(
            f"stores:\n  - type: file\n    paths: [{lab.keys}]\n"
            f"listeners:\n" + _listener(sock, RUNNER_UID, mode=mode)
        )

    write_config("0660")
    agent = start_agent(tmp_path, "--config", str(config))
    try:
        wait_for_socket(sock, proc=agent.proc)
        # uid 1000 cannot write the directory (root's, 0755); root in the container can.
        assert sh(f"rm {MISCONF}/agent.sock").returncode != 0
        planted = sh(f"rm {MISCONF}/agent.sock && ln -s {victim} {MISCONF}/agent.sock", "0:0")
        assert planted.returncode == 0, planted.stderr
        write_config("0666")
        agent.signal(signal.SIGHUP)
        assert wait_until(lambda: "reload" in agent.log(), 10), agent.log()
        time.sleep(0.5)
        after = victim.stat()
        assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (
            before.st_uid,
            before.st_gid,
            0o600,
        ), agent.log()
        assert agent.proc.poll() is None
    finally:
        agent.stop()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


# --- the appliance: its socket volume shared with a runner of another uid ----------------


@pytest.fixture
def appliance_factory(
    lab: Lab, tmp_path: Path, runner_accounts: dict[str, Path]
) -> Iterator[Callable[..., tuple[DockerContainer, DockerContainer]]]:
    """``make(main_socket)`` -> (appliance, runner): the appliance (image defaults, uid
    10001) serves the two keys with a ``runner.sock`` listener for uid 1000 in the named
    volume at /run/secretivex; the runner mounts that volume read-only, as documented."""
    from testcontainers.core.container import DockerContainer

    import docker

    client = docker.from_env()
    keys = tmp_path / "appliance-keys"
    keys.mkdir()
    keys.chmod(0o755)
    for name in ("ci_deploy", "personal"):
        shutil.copy(lab.keys / name, keys / name)
        os.chown(keys / name, 10001, 10001)
    extra = tmp_path / "appliance-config"
    extra.mkdir()
    extra.chmod(0o755)
    (extra / "listeners.yaml").write_text(
        "listeners:\n  - socket: /run/secretivex/runner.sock\n    mode: '0666'\n"
        f"    keys: ['comment:ci-*']\n    peers: {{uids: [{RUNNER_UID}]}}\n"
    )
    (extra / "listeners.yaml").chmod(0o644)
    started: list[DockerContainer] = []
    volumes = []

    def make(main_socket: str) -> tuple[DockerContainer, DockerContainer]:
        volume = client.volumes.create(f"secretivex-test-attack-{uuid.uuid4().hex[:8]}")
        volumes.append(volume)
        appliance = DockerContainer(
            DEV_IMAGE,
            command="--key /keys/ci_deploy --key /keys/personal"
            " --config /etc/secretivex/extra/listeners.yaml",
        )
        appliance.with_volume_mapping(volume.name, "/run/secretivex", "rw")
        appliance.with_volume_mapping(str(keys), "/keys", "ro")
        appliance.with_volume_mapping(str(extra), "/etc/secretivex/extra", "ro")
        appliance.with_env("SSH_AUTH_SOCK", main_socket)
        appliance.with_kwargs(network="none")
        started.append(appliance)
        appliance.start()
        deadline = time.monotonic() + 30
        while container_exec(appliance, "ssh-add -l").returncode != 0:
            assert time.monotonic() < deadline, b"".join(appliance.get_logs()).decode()
            time.sleep(0.2)
        runner = DockerContainer(DEV_IMAGE, command="infinity")
        runner.with_volume_mapping(volume.name, "/run/secretivex", "ro")
        for name, path in runner_accounts.items():
            runner.with_volume_mapping(str(path), f"/etc/{name}", "ro")
        runner.with_kwargs(entrypoint=["sleep"], user=RUNNER, network="none")
        started.append(runner)
        runner.start()
        return appliance, runner

    try:
        yield make
    finally:
        for container in reversed(started):
            with contextlib.suppress(Exception):
                container.stop()
        for volume in volumes:
            with contextlib.suppress(Exception):
                volume.remove(force=True)
        client.close()


def _comments(listed: subprocess.CompletedProcess[str]) -> list[str]:
    return sorted(line.split()[2] for line in listed.stdout.splitlines())


def test_root_in_a_runner_sharing_the_appliances_volume(appliance_factory) -> None:
    """The agent admits root on every socket (as OpenSSH's does). A runner job running
    as root (GitHub Actions' default) that shares the volume holding the appliance's
    MAIN socket therefore gets every key there, unscoped — the runner listener's scope
    only holds while the main socket is not in the shared volume. With the main socket
    kept inside the appliance (docs/containers.md), root sees the scope and no more."""
    runner_sock = {"SSH_AUTH_SOCK": "/run/secretivex/runner.sock"}
    main_sock = {"SSH_AUTH_SOCK": "/run/secretivex/agent.sock"}

    # The layout that shares the main socket's directory: uid 1000 is kept out of the
    # main socket by its mode, but root walks in.
    _, shared = appliance_factory("/run/secretivex/agent.sock")
    assert _comments(container_exec(shared, "ssh-add -l", env=runner_sock)) == ["ci-deploy"]
    assert container_exec(shared, "ssh-add -l", env=main_sock).returncode == 2
    as_root = container_exec(shared, "ssh-add -l", user="0:0", env=main_sock)
    assert _comments(as_root) == ["alice@laptop", "ci-deploy"]  # why the layout changed

    # The documented layout: the main socket stays in the appliance's own home.
    appliance, runner = appliance_factory("/var/lib/secretivex/agent.sock")
    assert container_exec(appliance, "ssh-add -l").returncode == 0
    listing = container_exec(runner, "ls -A /run/secretivex", user="0:0")
    assert listing.stdout.split() == ["runner.sock"]
    for user in (RUNNER, "0:0"):
        listed = container_exec(runner, "ssh-add -l", user=user, env=runner_sock)
        assert _comments(listed) == ["ci-deploy"], (user, listed.stderr)
        removed = container_exec(runner, "rm -f /run/secretivex/runner.sock", user=user)
        assert "Read-only file system" in removed.stderr
