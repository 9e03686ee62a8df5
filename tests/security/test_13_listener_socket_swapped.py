"""A listener's socket file swapped for a symlink by whoever can write its directory:
the agent (root) must never chmod/chown what the symlink names (found from inside a
container: tests/container/test_attack_from_container.py; this is the same attack by a
host uid, in a sticky world-writable directory the agent accepts)."""

from __future__ import annotations

import signal
import stat
import time
from pathlib import Path

from harness import running_agent, wait_for_socket, wait_until
from sec_a_helpers import need_root_and_setpriv
from sec_c_helpers import NOBODY, as_uid, shared_dir


def test_reload_does_not_chmod_or_chown_through_a_planted_symlink(tmp_path: Path) -> None:
    need_root_and_setpriv()
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o600)
    with shared_dir() as shared:
        sticky = shared / "sticky"
        sticky.mkdir()
        sticky.chmod(0o1777)
        sock = sticky / "ci.sock"
        config = tmp_path / "agent.yaml"

        def write(mode: str) -> None:
            config.write_text(
                f"listeners:\n  - socket: {sock}\n    mode: '{mode}'\n    owner: {NOBODY}\n"
            )

        write("0600")
        with running_agent(tmp_path, "--config", str(config)) as agent:
            wait_for_socket(sock, proc=agent.proc)
            # The socket is NOBODY's: in a sticky directory its owner may replace it.
            planted = as_uid(["sh", "-c", f"rm {sock} && ln -s {victim} {sock}"], env={})
            assert planted.returncode == 0, planted.stderr
            write("0666")
            agent.signal(signal.SIGHUP)
            assert wait_until(lambda: "configuration reloaded" in agent.log(), 10), agent.log()
            time.sleep(0.2)
            st = victim.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)
            assert "it is no longer the socket this agent bound" in agent.log()
            assert agent.proc.poll() is None
