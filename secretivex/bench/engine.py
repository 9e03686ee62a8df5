"""The load generator's inner loop: one epoll loop per process, raw non-blocking sockets.

Each *worker* is one closed-loop client: it sends a precomputed request frame, waits
for the whole answer, records the latency and sends the next one (on the same
connection, or on a new one with ``reconnect``). Nothing here allocates per request
beyond the ``recv`` result, and no asyncio machinery sits between the socket and the
counters, so one process drives tens of thousands of requests per second while using
a fraction of a core.

Time is ``time.monotonic_ns`` (CLOCK_MONOTONIC, shared by every process on the host),
so the parent can hand every process the same start instant and deadline.
"""

from __future__ import annotations

import contextlib
import heapq
import random
import resource
import select
import socket
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from secretivex.protocol import MAX_MESSAGE_SIZE, ProtocolError, parse_response

__all__ = ["Counts", "Engine", "EngineSpec"]

SSH_AGENT_FAILURE = 5
_LEGACY_FAILURES = (30, 102)

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLLERR = select.EPOLLERR | select.EPOLLHUP

#: Pause after a connect or I/O failure before the worker's next request, so a missing
#: agent produces counted failures at a bounded rate instead of a hot spin.
FAILURE_BACKOFF_NS = 10_000_000
#: Probe pacing while the agent's listen backlog is full (EAGAIN): workers that want to
#: connect wait in one FIFO queue and a single probe connect is tried per interval,
#: instead of every worker spinning on connect(2) and stealing the agent's CPU.
_RETRY_MIN_NS = 100_000
_RETRY_MAX_NS = 5_000_000
#: When no response timeout is set, in-flight requests get this long after the
#: duration deadline before they are counted as timeouts.
DRAIN_CAP_NS = 10_000_000_000
_PROGRESS_NS = 100_000_000
_UNLIMITED = 1 << 62


@dataclass(slots=True)
class EngineSpec:
    socket_path: str
    frames: list[bytes]
    expected_type: int
    workers: int
    worker_offset: int = 0
    total_workers: int = 1
    reconnect: bool = False
    #: Backlog-full connects (EAGAIN): False counts each as a ``connect_eagain`` failure,
    #: as a client using asyncio's open_unix_connection would see it; True queues the
    #: worker and probes politely (a ceiling measurement, labelled so in the report).
    connect_retry: bool = False
    connect_timeout_ns: int = 5_000_000_000
    response_timeout_ns: int = 10_000_000_000
    spread_ns: int = 0
    max_samples: int = 2_000_000
    seed: int = 0


@dataclass(slots=True)
class Counts:
    attempted: int = 0
    ok: int = 0
    request_failures: int = 0
    request_timeouts: int = 0
    connect_failures: int = 0
    connect_eagain: int = 0
    agent_failure: int = 0
    io_error: int = 0
    protocol_error: int = 0
    lat_count: int = 0
    lat_sum_ns: int = 0
    lat_min_ns: int = 0
    lat_max_ns: int = 0
    first_start_ns: int = 0
    last_done_ns: int = 0
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def add(self, other: Counts) -> None:
        """Fold another process's counts into these (sums, min and max)."""
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.lat_count:
            self.lat_max_ns = max(self.lat_max_ns, other.lat_max_ns)
            lo = other.lat_min_ns
            self.lat_min_ns = lo if self.lat_min_ns == 0 else min(self.lat_min_ns, lo)


_SUMMED: tuple[str, ...] = (
    "attempted", "ok", "request_failures", "request_timeouts", "connect_failures",
    "connect_eagain", "agent_failure", "io_error", "protocol_error", "lat_count", "lat_sum_ns",
    "cpu_user_s", "cpu_system_s",
)  # fmt: skip


class _Worker:
    __slots__ = (
        "buf",
        "connect_t0",
        "done",
        "fd",
        "fi",
        "gidx",
        "inflight",
        "left",
        "out",
        "sock",
        "t0",
        "t_sent",
    )

    def __init__(self, gidx: int, fi: int) -> None:
        self.gidx = gidx
        self.sock: socket.socket | None = None
        self.fd = -1
        self.buf = b""
        self.out: memoryview | None = None
        self.inflight = False
        self.left = 0
        self.done = True
        self.t0 = 0
        self.t_sent = 0
        self.connect_t0 = 0
        self.fi = fi


class Engine:
    """Runs the workers of one process through phases (connect, warmup, measured)."""

    def __init__(self, spec: EngineSpec, progress: Any = None, progress_index: int = 0) -> None:
        if not spec.frames:
            raise ValueError("no request frames")
        self.spec = spec
        self.path = spec.socket_path
        self.frames = spec.frames
        self.nframes = len(spec.frames)
        self.expected = spec.expected_type
        self.reconnect = spec.reconnect
        self.connect_retry = spec.connect_retry
        self.connect_timeout = spec.connect_timeout_ns
        self.response_timeout = spec.response_timeout_ns
        self.ep = select.epoll()
        self.by_fd: dict[int, _Worker] = {}
        self.timers: list[tuple[int, int, _Worker]] = []
        self.seq = 0
        self.workers = [
            _Worker(spec.worker_offset + i, (spec.worker_offset + i) % self.nframes)
            for i in range(spec.workers)
        ]
        self.counts = Counts()
        self.latencies = array("q")
        self.samples_seen = 0
        self.max_samples = max(spec.max_samples, 1)
        self.rng = random.Random(spec.seed)  # noqa: S311 - sampling, not secrets
        self.measure = False
        self.stopping = False
        #: No request starts at or after this instant (monotonic ns).
        self.deadline = _UNLIMITED
        self.connect_only = False
        self.active = 0
        self.checked_first = False
        self.progress = progress
        self.progress_index = progress_index
        #: Workers waiting for room in the agent's listen backlog, in arrival order.
        self.waiting: deque[_Worker] = deque()
        self.backlog_full = False
        self.backlog_delay = 0
        self._probe = _Worker(-1, 0)  # timer marker: retry the head of ``waiting``
        self._probe.done = False

    # -- timers ----------------------------------------------------------------------

    def _at(self, when: int, worker: _Worker) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (when, self.seq, worker))

    # -- worker life -----------------------------------------------------------------

    def _close(self, w: _Worker) -> None:
        sock = w.sock
        if sock is not None:
            if w.fd >= 0:
                self.by_fd.pop(w.fd, None)
                with contextlib.suppress(OSError, ValueError):
                    self.ep.unregister(w.fd)
            sock.close()
        w.sock = None
        w.fd = -1
        w.buf = b""
        w.out = None
        w.inflight = False

    def _retire(self, w: _Worker, close: bool = True) -> None:
        if close:
            self._close(w)
        if not w.done:
            w.done = True
            self.active -= 1

    def _issue(self, w: _Worker, now: int) -> None:
        """Start the worker's next request (or retire it)."""
        if self.connect_only:
            if w.sock is not None:
                self._retire(w, close=False)
                return
            w.connect_t0 = now
            if self._try_connect(w, now):
                self._retire(w, close=False)
            return
        if self.stopping or w.left <= 0 or now >= self.deadline:
            self._retire(w, close=self.reconnect)
            return
        w.t0 = now
        if w.sock is None:
            w.connect_t0 = now
            if not self._try_connect(w, now):
                return
        self._send(w, now)

    def _resume_connect(self, w: _Worker, now: int) -> None:
        """A worker whose connect waited for the backlog: connect, then go on."""
        if self.connect_timeout and now - w.connect_t0 >= self.connect_timeout:
            self._connect_failed(w, now)
            return
        if not self._try_connect(w, now):
            return
        if self.connect_only:
            self._retire(w, close=False)
        else:
            self._send(w, now)

    def _try_connect(self, w: _Worker, now: int) -> bool:
        """Connect ``w``: True when connected; else it failed (counted) or it waits."""
        if self.backlog_full:
            self.waiting.append(w)
            return False
        sock = w.sock
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            w.sock = sock
        try:
            sock.connect(self.path)
        except BlockingIOError:
            # The listen backlog is full. A measured request fails as a client would see
            # it, unless polite retrying was asked for (setup connects always retry).
            if self.measure and not self.connect_retry:
                self._connect_failed(w, now, eagain=True)
                return False
            if self.connect_timeout and now - w.connect_t0 >= self.connect_timeout:
                self._connect_failed(w, now)
                return False
            self.waiting.appendleft(w)
            self.backlog_full = True
            self.backlog_delay = min(max(self.backlog_delay * 2, _RETRY_MIN_NS), _RETRY_MAX_NS)
            self._at(now + self.backlog_delay, self._probe)
            return False
        except OSError:
            self._connect_failed(w, now)
            return False
        self.backlog_delay = 0
        fd = sock.fileno()
        w.fd = fd
        self.by_fd[fd] = w
        self.ep.register(fd, _EPOLLIN)
        return True

    def _drain_waiting(self, now: int) -> None:
        """Probe timer: expire waiters past their connect timeout, then connect in order
        until the backlog is full again."""
        if self.connect_timeout:
            expired = [w for w in self.waiting if now - w.connect_t0 >= self.connect_timeout]
            if expired:
                gone = set(expired)
                self.waiting = deque(w for w in self.waiting if w not in gone)
                for w in expired:
                    if not w.done:
                        self._connect_failed(w, now)
        self.backlog_full = False
        waiting = self.waiting
        while waiting and not self.backlog_full:
            w = waiting.popleft()
            if not w.done:
                self._resume_connect(w, now)

    def _connect_failed(self, w: _Worker, now: int, eagain: bool = False) -> None:
        self._close(w)
        if self.connect_only:
            self._retire(w)
            return
        if self.measure:
            c = self.counts
            c.attempted += 1
            if eagain:
                c.connect_eagain += 1
            else:
                c.connect_failures += 1
            c.last_done_ns = now
        w.left -= 1
        self._at(now + FAILURE_BACKOFF_NS, w)

    def _send(self, w: _Worker, now: int) -> None:
        frame = self.frames[w.fi]
        w.fi += 1
        if w.fi == self.nframes:
            w.fi = 0
        sock = w.sock
        assert sock is not None
        try:
            sent = sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._failed(w, now, "io_error")
            return
        w.inflight = True
        w.t_sent = now
        if sent < len(frame):
            w.out = memoryview(frame)[sent:]
            self.ep.modify(w.fd, _EPOLLIN | _EPOLLOUT)

    def _flush(self, w: _Worker, now: int) -> None:
        out = w.out
        sock = w.sock
        if out is None or sock is None:
            return
        try:
            sent = sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self._failed(w, now, "io_error")
            return
        if sent < len(out):
            w.out = out[sent:]
        else:
            w.out = None
            self.ep.modify(w.fd, _EPOLLIN)

    def _failed(self, w: _Worker, now: int, why: str) -> None:
        """An in-flight request failed: count it, drop the connection, go on."""
        if self.measure:
            c = self.counts
            c.attempted += 1
            c.last_done_ns = now
            if why == "timeout":
                c.request_timeouts += 1
            else:
                c.request_failures += 1
                if why == "io_error":
                    c.io_error += 1
                else:
                    c.protocol_error += 1
        self._close(w)
        w.left -= 1
        if why == "timeout":
            self._issue(w, now)
        else:
            self._at(now + FAILURE_BACKOFF_NS, w)

    def _answered(self, w: _Worker, now: int, payload: bytes, msg_type: int) -> None:
        ok = msg_type == self.expected
        if not self.checked_first:
            self.checked_first = True
            try:
                parse_response(payload[4:])
            except ProtocolError:
                self._failed(w, now, "protocol_error")
                return
        if self.measure:
            c = self.counts
            c.attempted += 1
            c.last_done_ns = now
            if ok:
                c.ok += 1
                latency = now - w.t0
                c.lat_count += 1
                c.lat_sum_ns += latency
                if latency > c.lat_max_ns:
                    c.lat_max_ns = latency
                if latency < c.lat_min_ns or c.lat_count == 1:
                    c.lat_min_ns = latency
                self.samples_seen += 1
                if len(self.latencies) < self.max_samples:
                    self.latencies.append(latency)
                else:  # reservoir sampling keeps a uniform sample of every latency
                    slot = self.rng.randrange(self.samples_seen)
                    if slot < self.max_samples:
                        self.latencies[slot] = latency
            elif msg_type == SSH_AGENT_FAILURE or msg_type in _LEGACY_FAILURES:
                c.request_failures += 1
                c.agent_failure += 1
            else:
                c.request_failures += 1
                c.protocol_error += 1
        w.inflight = False
        w.left -= 1
        if self.reconnect:
            self._close(w)
        self._issue(w, now)

    def _readable(self, w: _Worker, now: int) -> None:
        sock = w.sock
        if sock is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            if w.inflight:
                self._failed(w, now, "io_error")
            else:
                self._close(w)
            return
        if not data:
            if w.inflight:
                self._failed(w, now, "io_error")
            else:
                self._close(w)  # the agent closed an idle connection; reconnect on demand
            return
        if not w.inflight:
            self._close(w)  # unsolicited bytes: the stream is out of step
            return
        if w.buf:
            data = w.buf + data
        size = len(data)
        if size < 4:
            w.buf = data
            return
        length = int.from_bytes(data[:4], "big")
        if not 0 < length <= MAX_MESSAGE_SIZE:
            # Out of bounds, as the agent itself would refuse it: buffering toward a
            # declared 4 GiB would let a hostile agent grow this process until timeout.
            self._failed(w, now, "protocol_error")
            return
        need = length + 4
        if size == need:
            w.buf = b""
            self._answered(w, now, data, data[4])
        elif size < need:
            w.buf = data
        else:
            self._failed(w, now, "protocol_error")

    # -- phases ----------------------------------------------------------------------

    def _poll_timeout(self, now: int, wake_at: int) -> float:
        if self.timers and self.timers[0][0] < wake_at:
            wake_at = self.timers[0][0]
        return max(wake_at - now, 0) / 1e9

    def _run(self, deadline: int | None, hard_stop: int | None) -> None:
        poll = self.ep.poll
        by_fd = self.by_fd
        timers = self.timers
        monotonic_ns = time.monotonic_ns
        timeout_ns = self.response_timeout
        scan_every = min(max(timeout_ns // 8, 1_000_000), 50_000_000) if timeout_ns else 0
        next_scan = monotonic_ns() + scan_every if scan_every else _UNLIMITED
        next_progress = monotonic_ns() + _PROGRESS_NS
        while self.active > 0:
            now = monotonic_ns()
            wake_at = min(next_scan, next_progress)
            if deadline is not None and not self.stopping:
                wake_at = min(wake_at, deadline)
            if hard_stop is not None:
                wake_at = min(wake_at, hard_stop)
            events = poll(self._poll_timeout(now, wake_at))
            for fd, ev in events:
                w = by_fd.get(fd)
                if w is None:
                    continue
                if ev & _EPOLLOUT:
                    self._flush(w, monotonic_ns())
                if ev & (_EPOLLIN | _EPOLLERR) and w.fd == fd:
                    self._readable(w, monotonic_ns())
            now = monotonic_ns()
            while timers and timers[0][0] <= now:
                _, _, w = heapq.heappop(timers)
                if w is self._probe:
                    self._drain_waiting(now)
                elif not w.done:
                    self._issue(w, now)
            if deadline is not None and not self.stopping and now >= deadline:
                self.stopping = True
            if now >= next_scan:
                next_scan = now + scan_every
                for w in self.workers:
                    if w.inflight and now - w.t_sent > timeout_ns:
                        self._failed(w, now, "timeout")
            if now >= next_progress:
                next_progress = now + _PROGRESS_NS
                self._report_progress()
            if hard_stop is not None and now >= hard_stop:
                for w in self.workers:
                    if w.inflight:
                        self._failed(w, now, "timeout")
                for w in self.workers:
                    self._retire(w)
                timers.clear()
                self.waiting.clear()
                self.backlog_full = False
        self._report_progress()

    def _report_progress(self) -> None:
        if self.progress is not None:
            self.progress[self.progress_index] = self.counts.attempted

    def _start_all(self, first_at: int, quota: int, spread_ns: int) -> None:
        self.timers.clear()
        self.waiting.clear()
        self.backlog_full = False
        total = max(self.spec.total_workers, 1)
        self.active = len(self.workers)
        for w in self.workers:
            w.done = False
            w.left = quota
            offset = spread_ns * w.gidx // total if spread_ns else 0
            self._at(first_at + offset, w)

    def connect_all(self) -> int:
        """Open every worker's connection (persistent mode); returns how many opened."""
        if self.reconnect:
            return 0
        self.connect_only = True
        self.measure = False
        self._start_all(time.monotonic_ns(), 1, 0)
        self._run(None, None)
        self.connect_only = False
        return sum(1 for w in self.workers if w.sock is not None)

    def warmup(self, per_worker: int) -> None:
        """Unmeasured requests; failures here are not counted."""
        if per_worker <= 0:
            return
        self.measure = False
        self.stopping = False
        self._start_all(time.monotonic_ns(), per_worker, 0)
        self._run(None, None)

    def measured(
        self, start_ns: int, requests_per_worker: int | None, deadline_ns: int | None
    ) -> Counts:
        """The measured phase: a fixed number of requests per worker, or until a deadline."""
        self.measure = True
        self.stopping = False
        self.checked_first = False
        quota = requests_per_worker if requests_per_worker is not None else _UNLIMITED
        hard_stop = None
        if deadline_ns is not None:
            grace = self.response_timeout if self.response_timeout else DRAIN_CAP_NS
            hard_stop = deadline_ns + grace + 1_000_000_000
        self.deadline = deadline_ns if deadline_ns is not None else _UNLIMITED
        self.counts.first_start_ns = start_ns
        now = time.monotonic_ns()
        if start_ns > now:
            time.sleep((start_ns - now) / 1e9)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        self._start_all(start_ns, quota, self.spec.spread_ns)
        self._run(deadline_ns, hard_stop)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        self.deadline = _UNLIMITED
        c = self.counts
        c.cpu_user_s = usage1.ru_utime - usage0.ru_utime
        c.cpu_system_s = usage1.ru_stime - usage0.ru_stime
        if c.last_done_ns == 0:
            c.last_done_ns = time.monotonic_ns()
        return c

    def close(self) -> None:
        for w in self.workers:
            self._close(w)
        self.ep.close()
