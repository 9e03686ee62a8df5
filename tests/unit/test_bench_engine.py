"""The load generator against a scripted in-process agent: every failure is counted,
nothing hangs. Functional checks only: no timing assertions beyond generous bounds."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secretivex.bench.engine import Engine, EngineSpec
from secretivex.bench.report import validate_report
from secretivex.bench.runner import BenchError, BenchOptions, run_bench
from secretivex.keys.software import SoftwareKey
from secretivex.protocol import (
    SSH_AGENT_SIGN_RESPONSE,
    FrameDecoder,
    IdentitiesAnswer,
    RequestIdentities,
    SignRequest,
    SignResponse,
    encode_request,
    encode_response,
    frame,
    parse_request,
)

KEY = SoftwareKey(Ed25519PrivateKey.generate(), "fake-key")


class FakeAgent:
    """A tiny agent. ``mode`` decides how sign requests are answered:
    ok, stall, failure, hangup, garbage, trickle (one byte per send).
    ``stall_after`` lets that many signs succeed first (for the preflight)."""

    def __init__(self, path: Path, mode: str = "ok", stall_after: int = 0) -> None:
        self.path = path
        self.mode = mode
        self.stall_after = stall_after
        self.signs = 0
        self.connections = 0
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _answer(self, payload: bytes) -> bytes | None:
        request = parse_request(payload)
        if isinstance(request, RequestIdentities):
            return frame(encode_response(IdentitiesAnswer(((KEY.public_blob, KEY.comment),))))
        if not isinstance(request, SignRequest):
            return b"\x00\x00\x00\x01\x05"  # like OpenSSH: FAILURE for the rest
        self.signs += 1
        mode = self.mode if self.signs > self.stall_after else "ok"
        if mode == "stall":
            return None
        if mode == "failure":
            return b"\x00\x00\x00\x01\x05"
        if mode == "hangup":
            return b""
        if mode == "garbage":
            return b"\x00\x00\x00\x01\x63"
        return frame(encode_response(SignResponse(KEY.sign(request.data, request.flags))))

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            conn, _ = self._listener.accept()
                            conn.setblocking(True)
                            self.connections += 1
                            sel.register(conn, selectors.EVENT_READ, FrameDecoder())
                    continue
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    continue
                for payload in key.data.feed(data):
                    answer = self._answer(payload)
                    if answer is None:
                        continue
                    if answer == b"":
                        sel.unregister(conn)
                        conn.close()
                        break
                    if self.mode == "trickle" and self.signs > self.stall_after:
                        for i in range(len(answer)):
                            conn.sendall(answer[i : i + 1])
                    else:
                        conn.sendall(answer)
        for key in list(sel.get_map().values()):
            if key.data is not None:
                key.fileobj.close()  # type: ignore[union-attr]
        sel.close()


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "agent.sock"
    yield path
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def sign_frames() -> list[bytes]:
    return [
        frame(encode_request(SignRequest(KEY.public_blob, os.urandom(32), 0))) for _ in range(4)
    ]


def spec(path: Path, **changes: object) -> EngineSpec:
    base: dict[str, object] = {
        "socket_path": str(path),
        "frames": sign_frames(),
        "expected_type": SSH_AGENT_SIGN_RESPONSE,
        "workers": 3,
        "total_workers": 3,
        "connect_timeout_ns": 1_000_000_000,
        "response_timeout_ns": 2_000_000_000,
    }
    base.update(changes)
    return EngineSpec(**base)  # type: ignore[arg-type]


def run_engine(engine: Engine, requests: int | None, duration_ms: int | None = None) -> object:
    try:
        engine.connect_all()
        start = time.monotonic_ns()
        deadline = start + duration_ms * 1_000_000 if duration_ms is not None else None
        return engine.measured(start, requests, deadline)
    finally:
        engine.close()


def test_persistent_requests_all_succeed(sock: Path) -> None:
    with FakeAgent(sock) as agent:
        engine = Engine(spec(sock))
        counts = run_engine(engine, 20)
        assert counts.attempted == counts.ok == 60  # type: ignore[attr-defined]
        assert counts.lat_count == 60 and len(engine.latencies) == 60  # type: ignore[attr-defined]
        assert agent.connections == 3


def test_reconnect_opens_a_connection_per_request(sock: Path) -> None:
    with FakeAgent(sock) as agent:
        counts = run_engine(Engine(spec(sock, reconnect=True)), 10)
        assert counts.attempted == counts.ok == 30  # type: ignore[attr-defined]
        assert agent.connections == 30


def test_stalled_agent_becomes_counted_timeouts(sock: Path) -> None:
    with FakeAgent(sock, mode="stall"):
        started = time.monotonic()
        counts = run_engine(Engine(spec(sock, response_timeout_ns=200_000_000)), 2)
        assert time.monotonic() - started < 10
        assert counts.attempted == 6 and counts.request_timeouts == 6  # type: ignore[attr-defined]
        assert counts.ok == 0  # type: ignore[attr-defined]


def test_stalled_agent_in_duration_mode_stops(sock: Path) -> None:
    with FakeAgent(sock, mode="stall"):
        started = time.monotonic()
        counts = run_engine(Engine(spec(sock, response_timeout_ns=300_000_000)), None, 200)
        assert time.monotonic() - started < 10
        assert counts.ok == 0 and counts.request_timeouts >= 3  # type: ignore[attr-defined]


def test_agent_failures_are_request_failures(sock: Path) -> None:
    with FakeAgent(sock, mode="failure"):
        counts = run_engine(Engine(spec(sock)), 4)
        assert counts.attempted == 12 and counts.request_failures == 12  # type: ignore[attr-defined]
        assert counts.agent_failure == 12 and counts.ok == 0  # type: ignore[attr-defined]


def test_hangups_are_io_errors(sock: Path) -> None:
    with FakeAgent(sock, mode="hangup"):
        counts = run_engine(Engine(spec(sock)), 3)
        assert counts.attempted == 9 and counts.io_error == 9  # type: ignore[attr-defined]


def test_unexpected_answers_are_protocol_errors(sock: Path) -> None:
    with FakeAgent(sock, mode="garbage"):
        counts = run_engine(Engine(spec(sock)), 2)
        assert counts.protocol_error == 6 and counts.ok == 0  # type: ignore[attr-defined]


def test_answers_split_across_reads_are_reassembled(sock: Path) -> None:
    with FakeAgent(sock, mode="trickle"):
        counts = run_engine(Engine(spec(sock, workers=2, total_workers=2)), 5)
        assert counts.ok == 10  # type: ignore[attr-defined]


def test_missing_socket_counts_connect_failures(sock: Path) -> None:
    counts = run_engine(Engine(spec(sock)), 2)
    assert counts.attempted == 6 and counts.connect_failures == 6  # type: ignore[attr-defined]
    counts = run_engine(Engine(spec(sock, reconnect=True)), None, 100)
    assert counts.ok == 0 and counts.connect_failures >= 3  # type: ignore[attr-defined]


def test_reservoir_keeps_a_bounded_sample(sock: Path) -> None:
    with FakeAgent(sock):
        engine = Engine(spec(sock, workers=1, total_workers=1, max_samples=10))
        counts = run_engine(engine, 50)
        assert counts.ok == 50 and len(engine.latencies) == 10  # type: ignore[attr-defined]


# -- whole runs (fork + report) -------------------------------------------------------


def test_run_bench_report_is_valid(sock: Path) -> None:
    with FakeAgent(sock):
        report = run_bench(BenchOptions(socket=str(sock), concurrency=4, requests=5, processes=2))
    assert validate_report(report) == []
    assert report["results"]["attempted"] == report["results"]["ok"] == 20
    assert report["run"]["processes"] == 2
    assert report["run"]["key"]["comment"] == "fake-key"
    assert report["latency_us"]["samples"] == 20


def test_run_bench_duration_reconnect_with_zero_warmup(sock: Path) -> None:
    with FakeAgent(sock):
        report = run_bench(
            BenchOptions(socket=str(sock), concurrency=8, duration_ms=300, reconnect=True)
        )
    assert validate_report(report) == []
    assert report["run"]["warmup_per_worker"] == 0
    assert report["results"]["attempted"] > 0 and report["results"]["failed"] == 0


def test_run_bench_list_workload(sock: Path) -> None:
    with FakeAgent(sock):
        report = run_bench(
            BenchOptions(socket=str(sock), workload="list", concurrency=2, requests=3)
        )
    assert report["run"]["key"] is None and report["results"]["ok"] == 6


def test_run_bench_counts_a_stalled_agent(sock: Path) -> None:
    with FakeAgent(sock, mode="stall", stall_after=1):  # the preflight sign succeeds
        report = run_bench(
            BenchOptions(
                socket=str(sock), concurrency=2, requests=1, warmup=0, response_timeout_ms=200
            )
        )
    assert report["results"]["failures"]["request_timeouts"] == 2
    assert report["results"]["failure_rate"] == 1.0


def test_run_bench_without_agent_is_a_clear_error(sock: Path) -> None:
    with pytest.raises(BenchError, match="cannot connect to the agent"):
        run_bench(BenchOptions(socket=str(sock)))


@contextlib.contextmanager
def full_backlog(path: Path) -> Iterator[list[socket.socket]]:
    """A listener that never accepts, its backlog already full: every further connect
    gets EAGAIN, as a busy agent's does during a fan-out burst."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        while True:
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            fillers.append(filler)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                break
        yield fillers
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_backlog_full_connects_are_their_own_failure_class(sock: Path) -> None:
    with full_backlog(sock):
        counts = run_engine(Engine(spec(sock, reconnect=True)), 2)
    assert counts.connect_eagain == 6  # type: ignore[attr-defined]
    assert counts.connect_failures == 0 and counts.ok == 0  # type: ignore[attr-defined]
    assert counts.attempted == 6  # type: ignore[attr-defined]


def test_polite_retrying_waits_instead_of_counting_eagain(sock: Path) -> None:
    with full_backlog(sock):
        engine = Engine(
            spec(sock, reconnect=True, connect_retry=True, connect_timeout_ns=200_000_000)
        )
        counts = run_engine(engine, 1)
    # Nobody ever got in: each worker gave up after its connect timeout, none with EAGAIN.
    assert counts.connect_eagain == 0  # type: ignore[attr-defined]
    assert counts.connect_failures == 3  # type: ignore[attr-defined]


def test_run_bench_reports_eagain_and_labels_retrying(sock: Path) -> None:
    with FakeAgent(sock):
        report = run_bench(
            BenchOptions(socket=str(sock), concurrency=2, requests=2, connect_retry=True)
        )
    assert validate_report(report) == []
    assert report["run"]["connect_retry"] is True
    assert report["results"]["failures"]["connect_eagain"] == 0
