"""(a) The agent in a container with a SoftHSM token; host clients use its socket.

One session-wide ``secretivex_agent`` (the public plugin fixture: Ed25519, ECDSA P-256
and RSA 3072 keys generated on a fresh token) serves every test here.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from containerlib import TOKEN_KEY_KINDS, sign_and_verify, with_agent
from harness import Sshd, keygen, require_tool, run, start_sshd

from secretivex.testing import SecretivexContainer

pytestmark = [pytest.mark.container, pytest.mark.softhsm]

KINDS = {"ED25519": "ssh-ed25519", "ECDSA": "ecdsa-sha2-nistp256", "RSA": "ssh-rsa"}


def _key_line(agent: SecretivexContainer, kind: str) -> str:
    lines = [line for line in agent.public_keys() if line.startswith(KINDS[kind] + " ")]
    assert len(lines) == 1, agent.public_keys()
    return lines[0]


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], Sshd]]:
    require_tool("sshd", "ssh")
    started: list[Sshd] = []

    def make(authorized: list[str]) -> Sshd:
        sshd = start_sshd(tmp_path, authorized, name=f"sshd{len(started)}")
        started.append(sshd)
        return sshd

    try:
        yield make
    finally:
        for sshd in started:
            sshd.proc.terminate()
            sshd.proc.wait(10)


def test_socket_belongs_to_the_host_user(secretivex_agent: SecretivexContainer) -> None:
    st = secretivex_agent.socket_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    inspect = secretivex_agent.get_wrapped_container().attrs
    assert inspect["HostConfig"]["NetworkMode"] == "none"
    assert inspect["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"


def test_host_ssh_add_lists_the_token_keys(secretivex_agent: SecretivexContainer) -> None:
    env = with_agent(secretivex_agent.socket_path)
    listed = run(["ssh-add", "-l"], env=env).stdout.splitlines()
    assert [line.rsplit(" ", 1)[-1] for line in listed] == [f"({k})" for k in TOKEN_KEY_KINDS]
    assert [line.split()[2] for line in listed] == ["ed25519", "p256", "rsa3072"]  # labels
    assert run(["ssh-add", "-L"], env=env).stdout == secretivex_agent.authorized_keys()
    assert secretivex_agent.env() == {"SSH_AUTH_SOCK": str(secretivex_agent.socket_path)}


def test_ssh_add_inside_the_container(secretivex_agent: SecretivexContainer) -> None:
    inside = secretivex_agent.exec_ssh_add("-L")
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout == secretivex_agent.authorized_keys()


@pytest.mark.parametrize("kind", TOKEN_KEY_KINDS)
def test_host_signs_and_verifies(
    secretivex_agent: SecretivexContainer, kind: str, tmp_path: Path
) -> None:
    require_tool("ssh-keygen")
    out = sign_and_verify(
        tmp_path, _key_line(secretivex_agent, kind), with_agent(secretivex_agent.socket_path)
    )
    assert 'Good "file" signature for tester@example' in out


@pytest.mark.parametrize("kind", TOKEN_KEY_KINDS)
def test_host_ssh_login_with_a_token_key(
    secretivex_agent: SecretivexContainer,
    sshd_factory: Callable[[list[str]], Sshd],
    kind: str,
) -> None:
    """A real ssh to a real sshd (on the host, 127.0.0.1) authenticates with the token key."""
    line = _key_line(secretivex_agent, kind)
    sshd = sshd_factory([line])
    env = with_agent(secretivex_agent.socket_path)
    result = run([*sshd.ssh_argv(), "echo", "logged-in"], env=env, check=False)
    assert result.returncode == 0, result.stderr + sshd.log_path.read_text()
    assert result.stdout.strip() == "logged-in"
    fingerprint = run(["ssh-keygen", "-lf", "-"], input=line.encode()).stdout.split()[1]
    assert f"Accepted publickey for {sshd.user}" in sshd.log_path.read_text()
    assert fingerprint in sshd.log_path.read_text()


def test_host_git_over_ssh_with_a_token_key(
    secretivex_agent: SecretivexContainer,
    sshd_factory: Callable[[list[str]], Sshd],
    tmp_path: Path,
) -> None:
    require_tool("git")
    sshd = sshd_factory([_key_line(secretivex_agent, "ED25519")])
    origin = tmp_path / "origin.git"
    work = tmp_path / "seed"
    run(["git", "init", "-q", "--bare", str(origin)])
    run(["git", "init", "-q", "-b", "main", str(work)])
    (work / "README").write_text("served over ssh\n")
    git_id = ["-c", "user.name=t", "-c", "user.email=t@example"]
    run(["git", "-C", str(work), *git_id, "add", "README"])
    run(["git", "-C", str(work), *git_id, "commit", "-q", "-m", "seed"])
    run(["git", "-C", str(work), "push", "-q", str(origin), "main"])

    ssh_command = " ".join(sshd.ssh_argv()[:-1])  # everything but user@host
    env = {**with_agent(secretivex_agent.socket_path), "GIT_SSH_COMMAND": ssh_command}
    clone = tmp_path / "clone"
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{origin}"
    result = run(["git", "clone", "-q", "-b", "main", url, str(clone)], env=env, check=False)
    assert result.returncode == 0, result.stderr + sshd.log_path.read_text()
    assert (clone / "README").read_text() == "served over ssh\n"


def test_key_directory_on_the_runtime_image(
    secretivex_agent_factory: Callable[..., SecretivexContainer], tmp_path: Path
) -> None:
    """``key_dir`` alone: a file store over mounted keys, served by the plain image."""
    from containerlib import DEV_IMAGE

    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "id_ed25519", comment="ci-file-ed25519")
    keygen(keys, "id_ecdsa", "ecdsa", bits=256, comment="ci-file-ecdsa")
    (keys / "known_hosts").write_text("")
    agent = secretivex_agent_factory(image=DEV_IMAGE, keys=(), key_dir=keys)
    comments = sorted(line.split()[2] for line in agent.public_keys())
    assert comments == ["ci-file-ecdsa", "ci-file-ed25519"]
    out = sign_and_verify(tmp_path, agent.public_keys()[0], with_agent(agent.socket_path))
    assert "Good" in out


def test_token_and_key_directory_and_labels(
    secretivex_agent_factory: Callable[..., SecretivexContainer], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "id_ed25519", comment="from-file")
    agent = secretivex_agent_factory(keys=("ed25519=deploy", "ed25519"), key_dir=keys)
    assert [line.split()[2] for line in agent.public_keys()] == ["deploy", "ed25519", "from-file"]


def test_empty_agent_takes_ssh_add(
    secretivex_agent_factory: Callable[..., SecretivexContainer], tmp_path: Path
) -> None:
    agent = secretivex_agent_factory(keys=())
    assert agent.public_keys() == []
    key = keygen(tmp_path, "added", comment="added-by-test")
    run(["ssh-add", "-q", str(key)], env=with_agent(agent.socket_path))
    assert [line.split()[2] for line in agent.public_keys()] == ["added-by-test"]


def _our_containers() -> set[str]:
    import docker

    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": "org.secretivex.testing=1"})
        return {c.id for c in found}
    finally:
        client.close()


def test_failed_start_reports_logs_and_cleans_up(tmp_path: Path, docker_ready: None) -> None:
    from secretivex.testing import AgentNotReadyError

    before = _our_containers()
    broken = SecretivexContainer(
        keys=("ed25519",), config={"agent": {"no_such_key": 1}}, socket_parent=tmp_path
    )
    with pytest.raises(AgentNotReadyError) as raised:
        broken.start()
    message = str(raised.value)
    assert "exited (code 2)" in message
    assert "no_such_key" in message  # the agent's own validation message, from the logs
    assert list(tmp_path.iterdir()) == []  # the temp dir is gone
    assert _our_containers() <= before  # and so is the container


def test_bad_arguments_fail_at_once() -> None:
    with pytest.raises(ValueError, match="unknown key type 'dsa'"):
        SecretivexContainer(keys=("dsa",))
    with pytest.raises(TypeError, match="sequence of key types"):
        SecretivexContainer(keys="ed25519")
    with pytest.raises(ValueError, match="bad key label"):
        SecretivexContainer(keys=("ed25519=has space",))


def test_appliance_listener_for_another_host_user(
    secretivex_agent_factory: Callable[..., SecretivexContainer],
) -> None:
    """The agent as the image's own user (10001) gives host user 4242 a scoped listener."""
    require_tool("setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another host user")
    other = 4242
    agent = secretivex_agent_factory(
        keys=("ed25519=team-deploy", "ed25519=admin"),
        user="10001:10001",
        config={
            "listeners": [
                {
                    "socket": "/run/secretivex/team.sock",
                    "mode": "0666",
                    "keys": ["comment:team-*"],
                    "peers": {"uids": [other]},
                }
            ]
        },
    )
    team = agent.socket_dir / "team.sock"
    assert team.is_socket()
    assert team.stat().st_uid == 10001

    def ssh_add_as(uid: int, sock: Path) -> subprocess.CompletedProcess[str]:
        return run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
             "env", f"SSH_AUTH_SOCK={sock}", "ssh-add", "-l"],
            check=False,
        )  # fmt: skip

    listed = ssh_add_as(other, team)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[2] for line in listed.stdout.splitlines()] == ["team-deploy"]
    # Same mode 0666, another uid: the peer check refuses it.
    assert ssh_add_as(4343, team).returncode != 0
    # The main socket (0600, the agent's uid) is not theirs.
    assert ssh_add_as(other, agent.socket_path).returncode == 2
    # Root on the host is always admitted there and sees both keys.
    assert len(agent.public_keys()) == 2
