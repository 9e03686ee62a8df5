"""docs/quickstart.md's shared-host (system mode) blocks, run as written on a fresh
Debian host with a real systemd: from a checkout, as root (``sudo`` is the one word
not replayed), ``systemctl edit`` on a terminal (script(1)) answered by an editor that
types the two lines the block says to add. Then the documented owners, modes and who
is served; a listener added to the running agent the way the doc says; and
docs/containers.md's CI-runner socket unit for the packaged (non-root) agent."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdlib import PACKAGING, REPO, Host, boot, stop

pytestmark = pytest.mark.container

MARKER = "<!-- test: tests/systemd/test_system_mode_doc.py runs this block as written -->"
NEW_LISTENER = (
    "<!-- test: tests/systemd/test_system_mode_doc.py runs this block (a new listener) -->"
)
CI_UNIT = "<!-- test: tests/systemd/test_system_mode_doc.py runs this unit, the listener above"
WORK = "/root/checkout"


def doc_block(marker: str = MARKER, doc: str = "quickstart.md") -> str:
    rest = (REPO / "docs" / doc).read_text().split(marker, 1)[1]
    match = re.match(r"[^\n]*\n\s*```sh\n(.*?)```", rest, flags=re.S)
    assert match is not None, "the marker must sit right above the block"
    return match.group(1)


def ci_runner_files() -> tuple[str, str, str]:
    """containers.md: the listener fragment above the marker, the socket unit and the
    commands below it."""
    before, after = (REPO / "docs" / "containers.md").read_text().split(CI_UNIT, 1)
    listener = [
        b for b in re.findall(r"```yaml\n(.*?)```", before, flags=re.S) if "ci-runner.yaml" in b
    ][-1]
    match = re.match(r"[^\n]*\n\s*```ini\n(.*?)```\s*```sh\n(.*?)```", after, flags=re.S)
    assert match is not None, "the marker must sit right above the unit and its commands"
    return listener, match.group(1), match.group(2)


def first_comment_path(text: str) -> str:
    first = text.splitlines()[0]
    assert first.startswith("# /"), first
    return first.split()[1]


def drop_in_lines(block: str) -> list[str]:
    """The lines the block tells you to type into `systemctl edit` ("#   " comments)."""
    return [line[len("#   ") :] for line in block.splitlines() if line.startswith("#   ")]


def put_packaging(host: Host) -> None:
    """A checkout's packaging/ directory at WORK/packaging (what `cp` reads)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(PACKAGING.parent, arcname="packaging")
    host.sh(f"mkdir -p {WORK}")
    assert host.container.get_wrapped_container().put_archive(WORK, buf.getvalue())


@pytest.fixture(scope="module")
def host(systemd_image: str) -> Iterator[Host]:
    host = boot(systemd_image)
    try:
        yield host
    finally:
        stop(host)


def test_the_system_mode_block_runs_as_written(host: Host) -> None:
    block = doc_block()
    lines = drop_in_lines(block)
    assert lines and lines[0] == "[Service]", lines
    put_packaging(host)
    # the operator's key and its passphrase, in the checkout as the block expects
    host.sh(
        f"""set -e
        cd {WORK}
        ssh-keygen -q -t ed25519 -N 'correct horse' -C team-key -f team_ed25519
        echo 'correct horse' > passphrase.txt"""
    )
    # `systemctl edit` opens $SYSTEMD_EDITOR on a template: type the lines where it
    # keeps what you write (between its two marker comments)
    host.put("/root/dropin.txt", "\n".join(lines) + "\n")
    host.put(
        "/root/editor.sh",
        "#!/bin/sh\nset -e\n"
        "if grep -q '^### Anything between here' \"$1\"; then\n"
        "  sed -i '/^### Anything between here/r /root/dropin.txt' \"$1\"\n"
        "else\n"
        '  cat /root/dropin.txt >> "$1"\n'
        "fi\n",
        mode=0o755,
    )
    # sudo is the identity, except that `systemctl edit` wants a terminal: script(1)
    # gives it one, as the operator's shell has
    shim = (
        'sudo() { if [ "$1 $2" = "systemctl edit" ]; then script -qec "$*" /dev/null; '
        'else "$@"; fi; }'
    )
    proc = host.sh(
        f"set -e\n{shim}\ncd {WORK}\n{block}",
        env={"SYSTEMD_EDITOR": "/root/editor.sh"},
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, f"the block failed:\n{proc.stdout}\n{proc.stderr}"
    assert "LoadCredential=passphrase:" in host.sh("systemctl cat secretivex.service").stdout

    def owners() -> list[str]:
        out = host.sh("stat -c '%n %U:%G %a' /run/secretivex/*.sock").stdout
        return sorted(out.splitlines())

    documented = [
        "/run/secretivex/agent.sock secretivex:secretivex 660",
        "/run/secretivex/team.sock secretivex:team 660",
    ]
    assert owners() == documented  # before the first connection
    # carol has team as a supplementary group: served, and the key's passphrase came
    # in as the credential
    listed = host.sh("SSH_AUTH_SOCK=/run/secretivex/team.sock ssh-add -l", user="carol")
    assert "team_ed25519" in listed.stdout, listed.stdout
    # alice was added to group secretivex by the block (a new login sees it)
    listed = host.sh("SSH_AUTH_SOCK=/run/secretivex/agent.sock ssh-add -l", user="alice")
    assert "team_ed25519" in listed.stdout, listed.stdout
    for sock in ("agent", "team"):
        refused = host.sh(
            f"SSH_AUTH_SOCK=/run/secretivex/{sock}.sock ssh-add -l", user="eve", check=False
        )
        assert refused.returncode != 0, refused.stdout
    assert owners() == documented  # and after: systemd did not re-own them

    # -- a new listener for group ops, added to the running agent as the doc says
    host.sh("groupadd ops && usermod -aG ops nora")
    host.sh(
        """cat >> /etc/secretivex/config.yaml <<'YAML'
  - socket: /run/secretivex/ops.sock
    mode: "0660"
    group: ops
YAML"""
    )
    assert host.show("secretivex.service", "ActiveState")["ActiveState"] == "active"
    proc = host.sh(f"set -e\n{shim}\n{doc_block(NEW_LISTENER)}", check=False, timeout=120)
    assert proc.returncode == 0, f"the new-listener block failed:\n{proc.stdout}\n{proc.stderr}"
    listed = host.sh("SSH_AUTH_SOCK=/run/secretivex/ops.sock ssh-add -l", user="nora")
    assert "team_ed25519" in listed.stdout, listed.stdout

    # -- containers.md: the CI runner's listener with the packaged (non-root) agent
    listener, unit, commands = ci_runner_files()
    host.sh(f"mkdir -p {Path(first_comment_path(listener)).parent}")
    host.put(first_comment_path(listener), listener)
    host.put(first_comment_path(unit), unit)
    host.sh(
        """set -e
        cd /var/lib/secretivex/keys
        runuser -u secretivex -- ssh-keygen -q -t ed25519 -N '' -C ci-deploy -f ci_ed25519"""
    )
    proc = host.sh(f"set -e\n{shim}\n{commands}", check=False, timeout=120)
    assert proc.returncode == 0, f"the CI socket commands failed:\n{proc.stdout}\n{proc.stderr}"
    sock = "/run/secretivex-ci/agent.sock"
    assert host.sh(f"stat -c '%u:%g %a' {sock}").stdout.split() == ["1000:1000", "660"]
    # alice is uid 1000: the runner's uid sees the CI key only
    listed = host.sh(f"SSH_AUTH_SOCK={sock} ssh-add -l", user="alice")
    assert "ci-deploy" in listed.stdout and "team_ed25519" not in listed.stdout, listed.stdout
    refused = host.sh(f"SSH_AUTH_SOCK={sock} ssh-add -l", user="nora", check=False)
    assert refused.returncode != 0, refused.stdout
    assert host.sh(f"stat -c '%u:%g %a' {sock}").stdout.split() == ["1000:1000", "660"]
