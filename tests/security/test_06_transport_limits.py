"""Item 6, continued: the connection transport (agent/connection.py ``Channel``) keeps
what a peer can make the agent hold bounded, and running out of file descriptors
does not end a listener.

- a client that writes requests and never reads the replies: the agent stops reading
  from it once its replies fill the socket and a bounded buffer (RSS stays within a
  few MiB), and other clients are served meanwhile;
- the frame deadline runs only while the agent reads: a client whose replies wait for it
  to read is not cut off for the unfinished frame the agent stopped reading;
- a request whose connection was closed keeps the connection's slot until it ends;
- connections beyond the process's descriptor limit are dropped, not fatal: once they
  close, the same socket serves again (the event loop keeps a reserve descriptor).
"""

from __future__ import annotations

import base64
import contextlib
import socket
import time
from pathlib import Path

from harness import keygen, openssh_agent, require_tool, run, running_agent, wait_until
from sec_b_helpers import SSH_AGENTC_SIGN_REQUEST, HostileUpstream, string, u32
from sec_d_helpers import LIST_REQUEST, owner_key, raw_list, read_frame, vm_rss_kib

MIB = 1024


def test_a_client_that_never_reads_cannot_grow_the_agent(tmp_path: Path) -> None:
    """16 MiB of list requests (3.3 million, each answered with the listing) written by a
    client that never reads: without back-pressure the agent would queue ~300 MiB of
    replies. It holds a few MiB and keeps answering another client."""
    key = owner_key(tmp_path)
    with running_agent(tmp_path, "--key", str(key)) as agent:
        assert raw_list(agent.socket)[:1] == b"\x0c"
        base = vm_rss_kib(agent.proc.pid)
        hog = socket.socket(socket.AF_UNIX)
        hog.connect(str(agent.socket))
        hog.setblocking(False)
        chunk = LIST_REQUEST * (64 * 1024 // len(LIST_REQUEST))
        sent = 0
        deadline = time.monotonic() + 20
        while sent < 16 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                sent += hog.send(chunk[sent % len(chunk) :])  # whole frames, in order
            except BlockingIOError:
                time.sleep(0.01)  # the agent stopped reading: what we want to see
        time.sleep(0.5)
        grown = vm_rss_kib(agent.proc.pid) - base
        other = raw_list(agent.socket)
        hog.close()
        log = agent.log()
    print(f"\nnever-reading client: wrote {sent / MIB / 1024:.1f} MiB, agent RSS +{grown} KiB")
    assert other[:1] == b"\x0c", log
    # The kernel stops the writer once both socket buffers and the agent's bounded
    # read and write buffers are full.
    assert sent < 16 * 1024 * 1024, "the agent kept reading without sending replies"
    assert grown < 16 * MIB, (grown, log)
    assert "Traceback" not in log, log


def test_the_frame_deadline_waits_while_the_agent_is_not_reading(tmp_path: Path) -> None:
    """Pipelined list requests (5 bytes each: the agent's reads cut frames in two) until
    the agent stops reading, then three times the 1 s frame deadline without reading a
    reply: every request sent is answered once the client reads, and only then, with
    the last frame left unfinished, is the connection cut at the deadline."""
    key = owner_key(tmp_path)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("agent:\n  frame_timeout_ms: 1000\n  idle_timeout_ms: 0\n")
    with running_agent(tmp_path, "--config", str(cfg), "--key", str(key)) as agent:
        reply = raw_list(agent.socket)
        hog = socket.socket(socket.AF_UNIX)
        hog.connect(str(agent.socket))
        hog.setblocking(False)
        stream = LIST_REQUEST * 20_000  # periodic: stream[sent % 5 :] continues it
        sent = 0
        stalled = 0
        while stalled < 20:  # 0.2 s without progress: the agent stopped reading
            try:
                # 65,533 bytes a write: most writes, and the agent's reads, end mid-frame.
                start = sent % len(LIST_REQUEST)
                sent += hog.send(stream[start : start + 65_533])
                stalled = 0
            except BlockingIOError:
                stalled += 1
                time.sleep(0.01)
        # Finish the frame a partial send may have cut, as far as the socket takes it.
        with contextlib.suppress(BlockingIOError):
            sent += hog.send(LIST_REQUEST[sent % len(LIST_REQUEST) :])
        requests = sent // len(LIST_REQUEST)
        time.sleep(3)
        hog.setblocking(True)
        hog.settimeout(10)
        expected = requests * (4 + len(reply))
        received = 0
        while received < expected:
            data = hog.recv(1 << 20)
            if not data:
                break
            received += len(data)
        # The agent reads again: a frame still cut is finished and answered, then an
        # unfinished one is cut off at the deadline.
        if sent % len(LIST_REQUEST):
            hog.sendall(LIST_REQUEST[sent % len(LIST_REQUEST) :])
            assert read_frame(hog) == reply
        hog.sendall(LIST_REQUEST[:3])
        started = time.monotonic()
        try:
            closed = hog.recv(1) == b""
        except OSError:
            closed = True
        closed_after = time.monotonic() - started
        hog.close()
        log = agent.log()
    print(
        f"\nfull back-pressure for 3 s: {requests} requests answered, then cut after "
        f"{closed_after:.1f} s"
    )
    assert received == expected, (received, expected, log)
    assert closed and 0.5 < closed_after < 8, (closed_after, log)
    assert "frame not finished within 1s" in log, log


def test_running_out_of_descriptors_does_not_end_the_listener(tmp_path: Path) -> None:
    """The agent under a 64-descriptor limit; 200 clients connect and hold on. Those
    beyond the limit are dropped; once they close, the agent serves again, on the same
    socket, and its log has no traceback."""
    require_tool("prlimit")
    key = owner_key(tmp_path)
    with running_agent(
        tmp_path, "--key", str(key), prefix=("prlimit", "--nofile=64:64", "--")
    ) as agent:
        holders: list[socket.socket] = []
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            try:
                s.connect(str(agent.socket))
            except OSError:
                s.close()
                continue
            holders.append(s)
        time.sleep(0.5)
        assert agent.proc.poll() is None, agent.log()
        dropped = 0
        for s in holders:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # accepted, waiting for a request
                dropped += s.recv(1) == b""
            s.close()
        assert wait_until(lambda: raw_list(agent.socket)[:1] == b"\x0c", timeout=10), agent.log()
        for _ in range(20):  # and keeps serving
            assert raw_list(agent.socket)[:1] == b"\x0c"
        log = agent.log()
    print(f"\nout of descriptors: {len(holders)} connected, {dropped} dropped; served after")
    assert dropped > 0, "the descriptor limit was never reached: the test proves nothing"
    assert "Traceback" not in log, log


def test_a_closed_connection_keeps_its_slot_while_its_request_runs(tmp_path: Path) -> None:
    """Clients ask for a signature through an upstream agent that never answers, start
    another frame and never finish it: the frame deadline closes their connections while
    the signatures still wait. Each request keeps its connection's slot until it ends
    (the upstream's timeout), so closed connections cannot pile up work beyond
    ``max_connections``: the next client is refused while they run, served after."""
    require_tool("ssh-agent", "ssh-add", "ssh-keygen")
    keys = tmp_path / "keys"
    keys.mkdir()
    keygen(keys, "file_key", "ed25519", comment="file-key")
    keygen(keys, "up_key", "ed25519", comment="upstream-key")
    up_blob = base64.b64decode((keys / "up_key.pub").read_text().split()[1])
    with contextlib.ExitStack() as stack:
        real = stack.enter_context(openssh_agent(tmp_path / "real-upstream"))
        run(["ssh-add", "-q", str(keys / "up_key")], env=real.env)
        upstream = stack.enter_context(HostileUpstream(tmp_path / "hostile.sock", real.socket))
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(
            "agent:\n  max_connections: 4\n  reserved_connections: 0\n"
            "  max_connections_per_uid: 4\n  idle_timeout_ms: 0\n  frame_timeout_ms: 300\n"
            f"stores:\n  - type: file\n    paths: [{keys / 'file_key'}]\n"
            f"  - type: upstream\n    name: up\n    socket: {upstream.path}\n"
            "    timeout_ms: 4000\n    max_signers: 4\n"
        )
        agent = stack.enter_context(running_agent(tmp_path, "--config", str(cfg)))
        assert wait_until(lambda: b"upstream-key" in raw_list(agent.socket), 15)
        upstream.mode = "never"
        for _ in range(4):
            with socket.socket(socket.AF_UNIX) as hang_up:
                hang_up.connect(str(agent.socket))
                payload = bytes([SSH_AGENTC_SIGN_REQUEST]) + string(up_blob)
                hang_up.sendall(string(payload + string(b"abandoned") + u32(0)) + b"\0\0")
        time.sleep(1.0)  # the frame deadline has closed all four
        refused = _list_or_nothing(agent.socket)
        assert wait_until(lambda: _list_or_nothing(agent.socket)[:1] == b"\x0c", 15)
        log = agent.log()
    assert refused == b"", "a fifth connection was served while four requests ran"
    assert "max_connections=4 reached" in log, log
    assert "Traceback" not in log, log


def _list_or_nothing(path: Path) -> bytes:
    """A listing, or b"" when the agent refused the connection (it may close it before
    the request is even written)."""
    try:
        return raw_list(path, timeout=5)
    except OSError:
        return b""
