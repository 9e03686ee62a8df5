"""Item 6: what one peer can hold is bounded.

- another uid holding connections on a listener cannot lock the owner out of the main
  socket (per-uid and per-listener caps, headroom reserved for the agent's own uid);
- a slow sender is cut off at the frame deadline;
- 1,000 connections each holding a maximal frame minus one byte cost at most 64 MiB of
  RSS, and the memory goes back after they close;
- a burst of refusals is a few log lines, while metrics count every one;
- a client pipelining thousands of requests in one write does not starve others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import statistics
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import require_tool, run, running_agent, start_agent
from sec_c_helpers import openssh_agent
from sec_d_helpers import (
    LIST_REQUEST,
    MAX_FRAME,
    NOBODY,
    config_file,
    holder_count,
    metrics_snapshot,
    owner_key,
    raw_list,
    read_frame,
    settled_rss_kib,
    shared_dir,
    start_holder,
    stop_holder,
    vm_rss_kib,
)

MIB = 1024


def test_other_uid_cannot_lock_the_owner_out(tmp_path: Path) -> None:
    """300 idle connections from uid 65534 on a listener that admits it: the owner's
    ssh-add -l on the main socket still works. The same uid against OpenSSH's
    ssh-agent is refused outright (it serves its own uid only)."""
    require_tool("setpriv", "ssh-agent")
    key = owner_key(tmp_path)
    with shared_dir() as shared:
        ci = shared / "ci.sock"
        cfg = config_file(
            tmp_path,
            f"agent:\n  max_connections: 256\n"
            f"stores:\n  - type: file\n    paths: [{key}]\n"
            f"listeners:\n  - socket: {ci}\n    mode: '0666'\n    peers: {{uids: [{NOBODY}]}}\n",
        )
        with running_agent(tmp_path, "--config", str(cfg)) as agent:
            holder = start_holder(ci, 300)
            try:
                served = holder_count(holder)
                owner = agent.ssh_add("-l", check=False)
            finally:
                stop_holder(holder)
            log = agent.log()
        # Default per-uid cap: a quarter of max_connections.
        assert served == 256 // 4, log
        assert owner.returncode == 0 and "owner-key" in owner.stdout, owner.stderr

        # Per listener: a socket capped at 5 serves 5 even to the owner, who still has
        # the main socket.
        cfg2 = config_file(
            tmp_path,
            f"stores:\n  - type: file\n    paths: [{key}]\n"
            f"listeners:\n  - socket: {ci}\n    mode: '0666'\n    max_connections: 5\n",
            name="per-listener.yaml",
        )
        with running_agent(tmp_path, "--config", str(cfg2)) as agent:
            holder = start_holder(ci, 20, uid=os.getuid())
            try:
                assert holder_count(holder) == 5
                assert agent.ssh_add("-l", check=False).returncode == 0
            finally:
                stop_holder(holder)

        # OpenSSH's ssh-agent: no listeners, no other uid is ever served.
        with openssh_agent(shared) as ossh_sock:
            ossh_sock.chmod(0o666)
            holder = start_holder(ossh_sock, 300)
            try:
                ossh_served = holder_count(holder)
                ossh_owner = run(
                    ["ssh-add", "-l"],
                    env=dict(os.environ, SSH_AUTH_SOCK=str(ossh_sock)),
                    check=False,
                )
            finally:
                stop_holder(holder)
        assert ossh_served == 0
        assert ossh_owner.returncode == 1  # served: "The agent has no identities."
    print(
        f"\nper-uid: other uid served {served}/300 on the listener, owner ok; "
        f"OpenSSH served {ossh_served}/300 (other uid refused)"
    )


def test_slow_sender_is_cut_off_at_the_frame_deadline(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, "agent:\n  frame_timeout_ms: 2000\n  idle_timeout_ms: 0\n")
    with running_agent(tmp_path, "--config", str(cfg)) as agent:
        idle = socket.socket(socket.AF_UNIX)
        idle.connect(str(agent.socket))
        slow = socket.socket(socket.AF_UNIX)
        slow.connect(str(agent.socket))
        frame = struct.pack(">I", 100) + b"\x0b" * 100  # 104 bytes: never finished in time
        started = time.monotonic()
        sent = 0
        closed_after = None
        try:
            for byte in frame:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    closed_after = time.monotonic() - started
                    break
                sent += 1
                slow.settimeout(1.0)
                try:
                    if slow.recv(1) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    pass
                except OSError:
                    closed_after = time.monotonic() - started
                    break
            # The idle connection (no frame started) is not subject to the deadline.
            idle.sendall(LIST_REQUEST)
            idle.settimeout(10)
            assert read_frame(idle)[:1] == b"\x0c"
        finally:
            idle.close()
            slow.close()
        log = agent.log()
    assert closed_after is not None, f"one byte per second kept the connection open ({sent} B)"
    assert 1.5 <= closed_after < 15, closed_after
    assert sent < len(frame)
    assert "frame not finished within 2s" in log


def _hold_max_frame(path: Path, payload: bytes) -> socket.socket | None:
    """Send a maximal frame minus its last byte; None when the agent closed on us."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))  # blocking: waits while the listen backlog is full
        s.settimeout(60)
        s.sendall(payload)
    except OSError:
        s.close()
        return None
    return s


def test_memory_of_unfinished_frames_is_bounded(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    cfg = config_file(
        tmp_path,
        f"agent:\n  max_connections: 2048\n  frame_timeout_ms: 120000\n"
        f"metrics:\n  path: {metrics}\n  interval_ms: 600000\n",
    )
    count = 1000
    with running_agent(tmp_path, "--config", str(cfg)) as agent:
        pid = agent.proc.pid
        for _ in range(3):
            raw_list(agent.socket)
        base, _ = settled_rss_kib(pid)
        payload = struct.pack(">I", MAX_FRAME) + b"\x11" + bytes(MAX_FRAME - 2)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            socks = list(pool.map(lambda _: _hold_max_frame(agent.socket, payload), range(count)))
        kept = sum(s is not None for s in socks)
        try:
            held, peak = settled_rss_kib(pid)
            peak = max(peak, vm_rss_kib(pid))
            snap: dict[str, Any] = metrics_snapshot(agent.proc, metrics)
            assert raw_list(agent.socket)[:1] == b"\x0c"  # still serving
            # ssh-add writes a request's length and body separately: a small frame is
            # never refused for want of budget.
            assert agent.ssh_add("-l", check=False).returncode == 1  # "no identities"
        finally:
            for s in socks:
                if s is not None:
                    s.close()
        time.sleep(2.5)  # the heap trim runs once a second
        after, _ = settled_rss_kib(pid)
        assert raw_list(agent.socket)[:1] == b"\x0c"
    closed_by_agent = (
        snap["requests"]["by_kind"].get("frame", {}).get("outcomes", {}).get("buffer_full", 0)
    )
    print(
        f"\nRSS: base {base / MIB:.1f} MiB, with {count} x (max frame - 1) held "
        f"{held / MIB:.1f} MiB (peak {peak / MIB:.1f}, growth {(peak - base) / MIB:.1f} MiB), "
        f"after close {after / MIB:.1f} MiB; {closed_by_agent} connections closed at the "
        f"16 MiB budget, {kept} held their frame"
    )
    assert peak - base <= 64 * MIB, (base, peak)
    assert after - base <= 16 * MIB, (base, after)
    assert closed_by_agent > 0
    assert closed_by_agent + kept >= count  # every connection reached the agent


def test_refusal_burst_is_logged_rate_limited(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    cfg = config_file(
        tmp_path,
        f"agent:\n  max_connections: 4\nmetrics:\n  path: {metrics}\n  interval_ms: 600000\n",
    )
    burst = 2000
    agent = start_agent(tmp_path, "--config", str(cfg))
    try:
        holders = []
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(agent.socket))
            s.sendall(LIST_REQUEST)
            s.settimeout(10)
            assert read_frame(s)
            holders.append(s)
        for _ in range(burst):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(agent.socket))
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(1) == b""  # refused: closed without an answer
        snap: dict[str, Any] = metrics_snapshot(agent.proc, metrics)
        for s in holders:
            s.close()
    finally:
        assert agent.stop() == 0
    log = agent.log()
    warnings = [line for line in log.splitlines() if " WARNING " in line]
    refused = [line for line in warnings if "max_connections" in line]
    print(
        f"\nrefusal burst of {burst}: {len(refused)} WARNING lines; metrics counted "
        f"{snap['connections']['rejected'].get('max_connections')}"
    )
    assert snap["connections"]["rejected"].get("max_connections") == burst
    assert 1 <= len(refused) <= 5, refused
    # The suppressed ones are accounted for in the log too (at the latest on exit).
    assert any("not logged" in line for line in refused), refused


def test_pipelined_requests_do_not_starve_other_clients(tmp_path: Path) -> None:
    """One client writes 13,107 list requests per 64 KiB write, several writes back to
    back (a reader thread drains the replies), so the agent is busy with its batches the
    whole time; a second client's list latency is measured meanwhile."""
    key = owner_key(tmp_path)
    per_write = (64 * 1024) // len(LIST_REQUEST)
    writes = 8
    with running_agent(tmp_path, "--key", str(key)) as agent:
        reply_size = 4 + len(raw_list(agent.socket))
        idle_latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert raw_list(agent.socket)[:1] == b"\x0c"
            idle_latencies.append(time.perf_counter() - t0)

        pipe = socket.socket(socket.AF_UNIX)
        pipe.connect(str(agent.socket))
        pipe.settimeout(120)
        done = threading.Event()
        spans: list[float] = []

        def write_all() -> None:
            pipe.sendall(LIST_REQUEST * per_write * writes)

        def read_all() -> None:
            try:
                want = reply_size * per_write * writes
                got = 0
                t0 = time.perf_counter()
                while got < want:
                    chunk = pipe.recv(1 << 20)
                    if not chunk:
                        break
                    got += len(chunk)
                spans.append(time.perf_counter() - t0)
                assert got == want
            finally:
                done.set()

        writer = threading.Thread(target=write_all)
        reader = threading.Thread(target=read_all)
        reader.start()
        writer.start()
        busy_latencies = []
        while not done.is_set():
            t0 = time.perf_counter()
            assert raw_list(agent.socket)[:1] == b"\x0c"
            busy_latencies.append(time.perf_counter() - t0)
            time.sleep(0.002)
        writer.join()
        reader.join()
        pipe.close()
    assert spans, "the pipelining client did not get all its replies"
    batch = spans[0] / writes  # time the agent spends on one 64 KiB write
    busy_latencies.sort()
    median = statistics.median(busy_latencies)
    p90 = busy_latencies[int(len(busy_latencies) * 0.9)]
    print(
        f"\npipelining: {writes} x {per_write} requests, {batch * 1000:.0f} ms per write; "
        f"concurrent list latency median {median * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
        f"max {busy_latencies[-1] * 1000:.1f} ms over {len(busy_latencies)} requests "
        f"(idle median {statistics.median(idle_latencies) * 1000:.1f} ms)"
    )
    assert len(busy_latencies) >= 5
    # Without yielding, a request arriving during a batch waits for the rest of it:
    # measured before the fix, median 0.8 and p90 1.1 batches; after, 1/12 and 1/8.
    assert median < batch / 4, (batch, busy_latencies)
    assert p90 < batch / 2, (batch, busy_latencies)


@pytest.fixture(autouse=True)
def _no_sigpipe() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
