"""docs/quickstart.md's shared-host (system mode) block, run as written on a fresh
Debian host with a real systemd: from a checkout, as root (``sudo`` is the one word
not replayed), ``systemctl edit`` on a terminal (script(1)) answered by an editor that
types the two lines the block says to add. Then the documented owners, modes and who is served."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator

import pytest
from sdlib import PACKAGING, REPO, Host, boot, stop

pytestmark = pytest.mark.container

MARKER = "<!-- test: tests/systemd/test_system_mode_doc.py runs this block as written -->"
WORK = "/root/checkout"


def doc_block() -> str:
    doc = (REPO / "docs" / "quickstart.md").read_text()
    rest = doc.split(MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(.*?)```", rest, flags=re.S)
    assert match is not None, "the marker must sit right above the block"
    return match.group(1)


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
