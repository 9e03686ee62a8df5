"""``secretivex bench run``: prepare requests, fan out worker processes, build the report."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from secretivex.client import AgentIdentity, SyncAgentClient
from secretivex.client.errors import AgentError, AgentFailure
from secretivex.metrics.guardrails import Guardrail
from secretivex.protocol import (
    SSH_AGENT_IDENTITIES_ANSWER,
    SSH_AGENT_RSA_SHA2_256,
    SSH_AGENT_RSA_SHA2_512,
    SSH_AGENT_SIGN_RESPONSE,
    RequestIdentities,
    SignRequest,
    encode_request,
    frame,
)

from .engine import Counts, Engine, EngineSpec
from .model import (
    REPORT_SCHEMA_VERSION,
    BenchReport,
    FailureDetail,
    Failures,
    Generator,
    Host,
    KeyInfo,
    Latency,
    Meta,
    QueueWait,
    Results,
    Run,
)
from .report import FAILURE_KINDS, host_info, latency_summary, queue_wait_section, versions

__all__ = [
    "BenchError",
    "BenchOptions",
    "parse_flags",
    "raise_fd_limit",
    "run_bench",
    "select_identity",
]

#: Distinct payloads per run: enough that no cache can answer from a single entry.
FRAME_POOL = 64


class BenchError(Exception):
    """The bench cannot run (agent unreachable, no matching key...): one-line message."""


@dataclass(slots=True)
class BenchOptions:
    socket: str
    workload: Literal["sign", "list"] = "sign"
    concurrency: int = 16
    requests: int | None = None
    duration_ms: int | None = None
    warmup: int | None = None
    reconnect: bool = False
    #: Retry backlog-full (EAGAIN) connects politely instead of counting them as
    #: ``connect_eagain`` failures: measures a ceiling, labelled so in the report.
    connect_retry: bool = False
    connect_timeout_ms: int = 5000
    response_timeout_ms: int = 10000
    worker_start_spread_ms: int = 0
    payload_size: int = 128
    key: str | None = None
    flags: int = 0
    processes: int = 1
    metrics_file: str | None = None
    metrics_wait_ms: int = 3000
    guardrail: Guardrail | None = None
    max_samples: int = 2_000_000
    label: str | None = None

    @property
    def mode(self) -> Literal["requests", "duration"]:
        return "duration" if self.duration_ms is not None else "requests"

    @property
    def effective_warmup(self) -> int:
        """Warmup requests per worker: 0 by default in duration mode, 1 in requests mode."""
        if self.warmup is not None:
            return self.warmup
        return 0 if self.mode == "duration" else 1

    @property
    def effective_requests(self) -> int | None:
        if self.duration_ms is not None:
            return None
        return self.requests if self.requests is not None else 100

    def check(self) -> None:
        """Raise ``ValueError`` with a usage message for impossible combinations."""
        if self.requests is not None and self.duration_ms is not None:
            raise ValueError("--requests and --duration are mutually exclusive")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.requests is not None and self.requests < 1:
            raise ValueError("--requests must be at least 1")
        if self.duration_ms is not None and self.duration_ms < 0:
            raise ValueError("--duration must not be negative")
        if self.processes < 1:
            raise ValueError("--processes must be at least 1")
        if self.payload_size < 0 or self.payload_size > 200_000:
            raise ValueError("--payload-size must be between 0 and 200000")
        for name in ("warmup", "connect_timeout_ms", "response_timeout_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.worker_start_spread_ms < 0:
            raise ValueError("--worker-start-spread-ms must not be negative")
        if not 0 <= self.flags <= 0xFFFFFFFF:
            raise ValueError("--flags must fit in 32 bits")


_FLAG_NAMES = {
    "": 0,
    "0": 0,
    "ssh-rsa": 0,
    "sha1": 0,
    "rsa-sha2-256": SSH_AGENT_RSA_SHA2_256,
    "sha256": SSH_AGENT_RSA_SHA2_256,
    "rsa-sha2-512": SSH_AGENT_RSA_SHA2_512,
    "sha512": SSH_AGENT_RSA_SHA2_512,
}


def parse_flags(text: str | None) -> int:
    """``rsa-sha2-256``/``sha256``, ``rsa-sha2-512``/``sha512``, ``ssh-rsa`` or a number."""
    if text is None:
        return 0
    value = text.strip().lower()
    if value in _FLAG_NAMES:
        return _FLAG_NAMES[value]
    try:
        number = int(value, 0)
    except ValueError:
        raise ValueError(
            f"unknown --flags {text!r}: use rsa-sha2-256, rsa-sha2-512, ssh-rsa or a number"
        ) from None
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError("--flags must fit in 32 bits")
    return number


def select_identity(identities: list[AgentIdentity], wanted: str | None) -> AgentIdentity:
    """Pick a key by fingerprint, matcher (``comment:``/``type:``), comment or glob."""
    if not identities:
        raise BenchError("the agent holds no identities: add a key, or use --workload list")
    if not wanted:
        return identities[0]
    from fnmatch import fnmatchcase

    from secretivex.config.matchers import MatcherError, parse_matcher

    if wanted.startswith(("SHA256:", "comment:", "type:")):
        try:
            matcher = parse_matcher(wanted)
        except MatcherError as exc:
            raise BenchError(f"--key {wanted!r}: {exc}") from None
        found = [i for i in identities if matcher.matches(i.fingerprint, i.comment, i.key_type)]
    else:
        found = [i for i in identities if i.comment == wanted] or [
            i for i in identities if fnmatchcase(i.comment, wanted)
        ]
    if not found:
        raise BenchError(f"no identity in the agent matches --key {wanted!r}")
    return found[0]


def _build_frames(opts: BenchOptions, identity: AgentIdentity | None) -> list[bytes]:
    if opts.workload == "list":
        return [frame(encode_request(RequestIdentities()))]
    assert identity is not None
    frames = []
    for _ in range(FRAME_POOL):
        data = os.urandom(opts.payload_size)
        frames.append(frame(encode_request(SignRequest(identity.blob, data, opts.flags))))
    return frames


def _preflight(opts: BenchOptions) -> AgentIdentity | None:
    """List identities (and sign once) before starting: fail fast with a clear message."""
    timeout = opts.connect_timeout_ms / 1000 if opts.connect_timeout_ms else None
    response = opts.response_timeout_ms / 1000 if opts.response_timeout_ms else None
    try:
        with SyncAgentClient.connect(opts.socket, timeout, response) as agent:
            if opts.workload == "list":
                agent.list_identities()
                return None
            identity = select_identity(agent.list_identities(), opts.key)
            try:
                signature = agent.sign(identity.blob, b"secretivex bench preflight", opts.flags)
            except AgentFailure:
                return identity  # counted as request failures during the run
            from secretivex.keys.signatures import verify_signature

            if not verify_signature(identity.blob, b"secretivex bench preflight", signature):
                raise BenchError(
                    f"the agent's signature with {identity.fingerprint} does not verify"
                )
            return identity
    except AgentError as exc:
        raise BenchError(str(exc)) from None


def _read_metrics(path: str | None) -> tuple[dict[str, Any] | None, str | None]:
    if not path:
        return None, None
    from secretivex.metrics.writer import load_snapshot

    try:
        return load_snapshot(path), None
    except FileNotFoundError:
        return None, f"metrics file {path} does not exist"
    except (OSError, ValueError) as exc:
        return None, f"metrics file {path}: {exc}"


def _await_fresh_metrics(
    path: str, finished_unix_ms: int, wait_ms: int
) -> tuple[dict[str, Any] | None, str | None]:
    deadline = time.monotonic() + wait_ms / 1000
    snapshot, problem = _read_metrics(path)
    while True:
        if snapshot is not None:
            meta = snapshot.get("meta")
            captured = meta.get("captured_unix_ms") if isinstance(meta, dict) else None
            if isinstance(captured, int) and captured >= finished_unix_ms:
                return snapshot, None
        if time.monotonic() >= deadline:
            return snapshot, problem
        time.sleep(0.05)
        snapshot, problem = _read_metrics(path)


# -- worker messages: what the parent and each worker process say to each other ------


@dataclass(frozen=True, slots=True)
class Ready:
    """Worker -> parent: connections open and warmup done."""

    opened: int


@dataclass(frozen=True, slots=True)
class Go:
    """Parent -> worker: the common start instant and deadline (monotonic ns)."""

    start_ns: int
    deadline_ns: int | None


@dataclass(frozen=True, slots=True)
class Stop:
    """Parent -> worker: another worker failed during setup; do not measure."""


@dataclass(frozen=True, slots=True)
class Finished:
    """Worker -> parent: the measured counts (the latency samples follow as raw bytes)."""

    counts: Counts


@dataclass(frozen=True, slots=True)
class Failed:
    """Worker -> parent: the worker could not go on (one line)."""

    reason: str


WorkerMessage = Ready | Finished | Failed


def _child(
    spec: EngineSpec,
    conn: Connection,
    progress: Any,
    index: int,
    warmup: int,
    requests: int | None,
) -> None:
    engine: Engine | None = None
    try:
        engine = Engine(spec, progress, index)
        opened = engine.connect_all()
        engine.warmup(warmup)
        conn.send(Ready(opened))
        order = conn.recv()
        if not isinstance(order, Go):
            return
        counts = engine.measured(order.start_ns, requests, order.deadline_ns)
        conn.send(Finished(counts))
        conn.send_bytes(engine.latencies.tobytes())
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):
            conn.send(Failed("interrupted"))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(Failed(f"{type(exc).__name__}: {exc}"))
    finally:
        if engine is not None:
            engine.close()
        conn.close()


def _split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


ProgressHook = Callable[[int, int | None, float], None]


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit towards ``wanted`` (inherited by the workers)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass(slots=True)
class _Worker:
    process: Any
    conn: Connection
    size: int


@dataclass(slots=True)
class _Fleet:
    """The worker processes of one run and the counter they report progress in."""

    workers: list[_Worker]
    progress: Any
    requests: int | None


@dataclass(slots=True)
class _Gathered:
    """What came back from the workers, and when the measured phase ran."""

    results: dict[int, Counts] = field(default_factory=dict)
    latencies: dict[int, bytes] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    start_ns: int = 0
    measure_started_unix_ms: int = 0


@dataclass(slots=True)
class _Totals:
    counts: Counts
    sorted_samples: list[int]
    worker_failures: int
    elapsed_ns: int


def _fan_out(opts: BenchOptions, frames: list[bytes], expected: int) -> _Fleet:
    """Start one worker process per share of the connections (fork: nothing to pickle)."""
    sizes = _split(opts.concurrency, opts.processes)
    raise_fd_limit(max(sizes) + 64)
    ctx = multiprocessing.get_context("fork")
    shared = ctx.RawArray("q", len(sizes))
    requests = opts.effective_requests
    workers: list[_Worker] = []
    offset = 0
    try:
        for index, size in enumerate(sizes):
            spec = EngineSpec(
                socket_path=opts.socket,
                frames=frames,
                expected_type=expected,
                workers=size,
                worker_offset=offset,
                total_workers=opts.concurrency,
                reconnect=opts.reconnect,
                connect_retry=opts.connect_retry,
                connect_timeout_ns=opts.connect_timeout_ms * 1_000_000,
                response_timeout_ns=opts.response_timeout_ms * 1_000_000,
                spread_ns=opts.worker_start_spread_ms * 1_000_000,
                max_samples=max(opts.max_samples // len(sizes), 1),
                seed=index,
            )
            offset += size
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(
                target=_child,
                args=(spec, child_end, shared, index, opts.effective_warmup, requests),
                daemon=True,
            )
            process.start()
            child_end.close()
            workers.append(_Worker(process, parent_end, size))
    except BaseException:
        _stop_fleet(_Fleet(workers, shared, requests), terminate=True)
        raise
    return _Fleet(workers, shared, requests)


def _receive(worker: _Worker) -> WorkerMessage:
    try:
        message = worker.conn.recv()
    except (EOFError, OSError):
        return Failed(f"worker process exited with {worker.process.exitcode}")
    if not isinstance(message, Ready | Finished | Failed):
        return Failed(f"unexpected worker message {type(message).__name__}")
    return message


def _each_message(
    fleet: _Fleet, pending: set[int], tick: Callable[[], None] | None = None
) -> Iterator[tuple[int, WorkerMessage]]:
    """Yield ``(worker index, message)`` as workers speak (or die) until none is pending."""
    while pending:
        handles: list[Any] = [fleet.workers[i].conn for i in pending]
        handles += [fleet.workers[i].process.sentinel for i in pending]
        ready = wait(handles, timeout=0.1 if tick is not None else None)
        for i in sorted(pending):
            worker = fleet.workers[i]
            if worker.conn in ready or worker.process.sentinel in ready:
                pending.discard(i)
                yield i, _receive(worker)
        if tick is not None:
            tick()


def _gather(fleet: _Fleet, opts: BenchOptions, progress: ProgressHook | None) -> _Gathered:
    """Setup barrier, one common start instant for everyone, then the results."""
    out = _Gathered()
    for i, message in _each_message(fleet, set(range(len(fleet.workers)))):
        if isinstance(message, Failed):
            out.errors[i] = message.reason
    out.start_ns = time.monotonic_ns() + 50_000_000
    deadline_ns = (
        out.start_ns + opts.duration_ms * 1_000_000 if opts.duration_ms is not None else None
    )
    out.measure_started_unix_ms = int(time.time() * 1000) + 50
    for i, worker in enumerate(fleet.workers):
        if i not in out.errors:
            with contextlib.suppress(OSError):
                worker.conn.send(Go(out.start_ns, deadline_ns))
    total = fleet.requests * opts.concurrency if fleet.requests is not None else None

    def tick() -> None:
        if progress is None:
            return
        fraction = 0.0
        if deadline_ns is not None and opts.duration_ms:
            elapsed = (time.monotonic_ns() - out.start_ns) / (deadline_ns - out.start_ns)
            fraction = min(max(elapsed, 0.0), 1.0)
        progress(sum(fleet.progress), total, fraction)

    pending = {i for i in range(len(fleet.workers)) if i not in out.errors}
    for i, message in _each_message(fleet, pending, tick):
        if isinstance(message, Finished):
            out.results[i] = message.counts
            try:
                out.latencies[i] = fleet.workers[i].conn.recv_bytes()
            except (EOFError, OSError):
                out.errors[i] = "worker process exited before sending its latencies"
        elif isinstance(message, Failed):
            out.errors[i] = message.reason
        else:
            out.errors[i] = "worker sent Ready twice"
    return out


def _stop_fleet(fleet: _Fleet, terminate: bool) -> None:
    for worker in fleet.workers:
        if terminate and worker.process.is_alive():
            worker.process.terminate()
    for worker in fleet.workers:
        worker.process.join(timeout=5)
        worker.conn.close()


def _aggregate(fleet: _Fleet, gathered: _Gathered) -> _Totals:
    """Sum every worker's counts; merge the latency samples."""
    totals = Counts()
    last_done = gathered.start_ns
    samples = array("q")
    for i, counts in gathered.results.items():
        totals.add(counts)
        last_done = max(last_done, counts.last_done_ns)
        samples.frombytes(gathered.latencies.get(i, b""))
    return _Totals(
        counts=totals,
        sorted_samples=sorted(samples),
        worker_failures=sum(fleet.workers[i].size for i in gathered.errors),
        elapsed_ns=max(last_done - gathered.start_ns, 1),
    )


def _report(
    opts: BenchOptions,
    identity: AgentIdentity | None,
    fleet: _Fleet,
    gathered: _Gathered,
    totals: _Totals,
    started_unix_ms: int,
    finished_unix_ms: int,
    queue_wait: dict[str, Any] | None,
) -> BenchReport:
    c = totals.counts
    failures = Failures(
        request_failures=c.request_failures,
        request_timeouts=c.request_timeouts,
        connect_failures=c.connect_failures,
        connect_eagain=c.connect_eagain,
        worker_failures=totals.worker_failures,
    )
    failed = sum(getattr(failures, k) for k in FAILURE_KINDS if k != "worker_failures")
    attempted = c.attempted
    elapsed_s = totals.elapsed_ns / 1e9
    cpu_s = c.cpu_user_s + c.cpu_system_s
    host = host_info()
    processes = len(fleet.workers)
    key = (
        KeyInfo(fingerprint=identity.fingerprint, type=identity.key_type, comment=identity.comment)
        if identity is not None
        else None
    )
    return BenchReport(
        meta=Meta(
            schema_version=REPORT_SCHEMA_VERSION,
            tool="secretivex bench",
            versions=versions(),
            host=Host(**host),
            started_unix_ms=started_unix_ms,
            measure_started_unix_ms=gathered.measure_started_unix_ms,
            finished_unix_ms=finished_unix_ms,
            label=opts.label,
        ),
        run=Run(
            workload=opts.workload,
            socket=opts.socket,
            mode=opts.mode,
            concurrency=opts.concurrency,
            requests_per_worker=fleet.requests,
            duration_ms=opts.duration_ms,
            warmup_per_worker=opts.effective_warmup,
            reconnect=opts.reconnect,
            connect_retry=opts.connect_retry,
            processes=processes,
            connect_timeout_ms=opts.connect_timeout_ms,
            response_timeout_ms=opts.response_timeout_ms,
            worker_start_spread_ms=opts.worker_start_spread_ms,
            payload_size=opts.payload_size if opts.workload == "sign" else 0,
            flags=opts.flags,
            key=key,
        ),
        results=Results(
            attempted=attempted,
            ok=c.ok,
            failed=failed + totals.worker_failures,
            failures=failures,
            failure_detail=FailureDetail(
                agent_failure=c.agent_failure, io_error=c.io_error, protocol_error=c.protocol_error
            ),
            worker_errors=[gathered.errors[i] for i in sorted(gathered.errors)],
            success_rate=round(c.ok / attempted, 6) if attempted else None,
            failure_rate=round(failed / attempted, 6) if attempted else None,
            elapsed_ms=round(elapsed_s * 1000, 3),
            rps=round(c.ok / elapsed_s, 1),
            attempted_rps=round(attempted / elapsed_s, 1),
        ),
        latency_us=Latency(
            **latency_summary(
                totals.sorted_samples, c.lat_count, c.lat_sum_ns, c.lat_min_ns, c.lat_max_ns
            )
        ),
        generator=Generator(
            processes=processes,
            cpu_user_s=round(c.cpu_user_s, 3),
            cpu_system_s=round(c.cpu_system_s, 3),
            cpu_s=round(cpu_s, 3),
            cpu_percent=round(100 * cpu_s / elapsed_s, 1),
            host_cpus=host["cpus"],
        ),
        queue_wait=QueueWait.model_validate(queue_wait) if queue_wait is not None else None,
    )


def run_bench(opts: BenchOptions, progress: ProgressHook | None = None) -> dict[str, Any]:
    """Run one benchmark and return the report (a dict matching the shipped schema).

    Steps: preflight (fail fast), fan out worker processes, gather their messages,
    aggregate the counts, build the typed report. ``progress(done, total_or_None,
    fraction_of_duration)`` is called about ten times a second while the measured phase
    runs. Raises ``BenchError`` when the run cannot start (no agent, no key),
    ``ValueError`` for bad options.
    """
    opts.check()
    started_unix_ms = int(time.time() * 1000)
    identity = _preflight(opts)
    frames = _build_frames(opts, identity)
    expected = SSH_AGENT_IDENTITIES_ANSWER if opts.workload == "list" else SSH_AGENT_SIGN_RESPONSE
    before, _ = _read_metrics(opts.metrics_file)
    fleet = _fan_out(opts, frames, expected)
    try:
        gathered = _gather(fleet, opts, progress)
    except BaseException:
        _stop_fleet(fleet, terminate=True)
        raise
    _stop_fleet(fleet, terminate=False)
    finished_unix_ms = int(time.time() * 1000)
    totals = _aggregate(fleet, gathered)
    queue_wait = None
    if opts.metrics_file:
        after, problem = _await_fresh_metrics(
            opts.metrics_file, finished_unix_ms, opts.metrics_wait_ms
        )
        queue_wait = queue_wait_section(
            opts.metrics_file, before, after, finished_unix_ms, opts.guardrail, problem
        )
    report = _report(
        opts, identity, fleet, gathered, totals, started_unix_ms, finished_unix_ms, queue_wait
    )
    return report.model_dump(mode="json")
