"""Serial access to one PKCS#11 module, through ``anyio.to_thread`` in batches.

python-pkcs11 initialises modules with ``C_Initialize(NULL)``, which tells the module
that the application will not call it from several threads at once (SoftHSM then
turns its own locking off). So every call into one module, for every token and
session of it, is serialised here.

Every blocking call runs in ``anyio.to_thread.run_sync(..., limiter=...)`` with one
``CapacityLimiter(1)`` per module (per event loop): no thread of our own, nothing that
outlives the event loop, and the task that started a thread always awaits it.

Why batches: with one ``run_sync`` per call, the next call cannot start until the
event loop has seen the previous result, released the limiter, woken the next waiter
and handed its job to a worker thread. That round trip sits on the token's critical
path and halved Ed25519 throughput on SoftHSM (about 51% of a plain python-pkcs11
loop). So callers append their job to the module's queue, and only a caller that finds
no *drain* in progress starts one: a single ``run_sync(self._drain)`` that runs queued
jobs one after another until the queue is empty, picking up jobs that arrive while it
runs. Its caller (the *drainer*) reads its own result when the drain returns; other
waiters are woken through ``call_soon_threadsafe`` in small batches while the drain
goes on (``FLUSH_*``), and the last ones by the drainer when it returns (no extra
wake-up). A lone request is a drain of one job: it never waits for a batch. Measured
on a loaded 2-core machine, 16 concurrent signers reach about 88% of the raw loop's
Ed25519 rate (75% for the much faster P-256), on a par with a dedicated thread;
waking every waiter only when the drain returns was no faster in-process and slower
through the agent, and adds latency.

A drain is bounded (``DRAIN_BUDGET_S``): the drainer's own request is its first job and
must not wait for an endless stream of others (it would show in p99 latency). When the
budget is spent and jobs remain, the drain stops and the drainer hands the role to the
caller at the head of the queue, which starts the next drain.

Cancellation: a waiter that gives up before its job ran has its job skipped (one that
already ran has its result dropped); if it had just been handed the drainer role, it
passes the role on. A drainer cancelled before its thread started skips its own job
and passes the role on; once the thread runs, ``run_sync`` (no ``abandon_on_cancel``)
waits for it, so the drain finishes and every result is delivered first. An
exception reaches only the caller whose job raised it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

T = TypeVar("T")

#: While a drain is busy, results go back to the event loop at the latest when the
#: queue runs low (the loop must refill it before the drain ends), when this many
#: results wait, or when the oldest waited this long. Waking the event loop costs a
#: syscall and a thread switch competing with the drain for the GIL and the CPU.
FLUSH_WHEN_QUEUE_BELOW = 4
FLUSH_AT_RESULTS = 8
FLUSH_AFTER_S = 0.001
#: How long one drain may run before it hands on (bounds the drainer's own latency).
DRAIN_BUDGET_S = 0.005

# Job states. A job in the queue is QUEUED, CANCELLED (skipped when reached) or, at the
# head only, DRAIN (its caller was handed the drainer role).
_QUEUED, _RUNNING, _OK, _FAILED, _CANCELLED, _DRAIN = range(6)
_FINISHED = (_OK, _FAILED)


class _Job(Generic[T]):
    __slots__ = ("args", "fn", "state", "value", "waiter")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], waiter: Any) -> None:
        self.fn = fn
        self.args = args
        self.state = _QUEUED
        self.value: Any = None
        #: what its caller awaits: an ``asyncio.Future`` (asyncio), else an ``anyio.Event``
        self.waiter = waiter

    def outcome(self) -> T:
        if self.state == _FAILED:
            exc, self.value = self.value, None
            try:
                raise exc
            finally:
                del exc, self  # no frame <-> traceback cycle
        return self.value  # type: ignore[no-any-return]


def _wake_futures(done: list[_Job[Any]]) -> None:
    """On an asyncio loop: wake the callers of ``done`` (unless they gave up)."""
    for job in done:
        future = job.waiter
        if not future.done():
            future.set_result(None)


def _wake_events(done: list[_Job[Any]]) -> None:
    """On another event loop (trio): wake the callers of ``done``."""
    for job in done:
        job.waiter.set()


class _Lane:
    """The callers of one module in one event loop: their queue and the drainer role."""

    __slots__ = ("call_soon", "draining", "jobs", "limiter", "lock", "loop", "wake")

    def __init__(
        self, loop: asyncio.AbstractEventLoop | None, call_soon: Callable[..., Any]
    ) -> None:
        #: the asyncio loop, None for other event loops (trio)
        self.loop = loop
        self.jobs: deque[_Job[Any]] = deque()
        #: guards ``jobs`` and ``draining`` between the event loop and the drain thread
        self.lock = threading.Lock()
        #: a caller holds the drainer role (runs or is about to start a drain)
        self.draining = False
        self.limiter = anyio.CapacityLimiter(1)
        #: thread-safe "run this callback on the loop soon"
        self.call_soon = call_soon
        #: wakes the callers of a list of jobs (on the loop)
        self.wake = _wake_events if loop is None else _wake_futures

    def idle(self) -> bool:
        return not self.draining and not self.jobs

    def hand_on(self) -> None:
        """On the loop, by the holder of the drainer role: pass it to the next live job."""
        with self.lock:
            jobs = self.jobs
            while jobs and jobs[0].state == _CANCELLED:
                jobs.popleft()
            if not jobs:
                self.draining = False
                return
            head = jobs[0]
            head.state = _DRAIN
        self.wake([head])


class ModuleWorker:
    """The serial executor of one PKCS#11 module (shared by every store using it).

    ``generation`` counts ``C_Finalize``/``C_Initialize`` cycles: sessions opened in an
    older generation are dead, and the stores that hold them re-open.
    """

    _registry: dict[str, ModuleWorker] = {}
    _registry_lock = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path = path
        self.generation = 0
        self.lib: Any = None
        #: token lookups since the last C_Initialize: SoftHSM's view of its tokens is
        #: frozen at C_Initialize, so a token missing from an already-used module may
        #: still appear after re-initialising it.
        self.lookups = 0
        #: slot id -> how many sessions of this process are logged in to that token
        self.logins: dict[int, int] = {}
        #: one lane per event loop (in practice: one, the agent's)
        self._lanes: dict[Hashable, _Lane] = {}
        self._lanes_lock = threading.Lock()
        self._last: tuple[Hashable, _Lane] | None = None
        #: held by a drain for its whole run: even drains of two event loops in one
        #: process never call into the module at the same time
        self._serial = threading.Lock()

    # ------------------------------------------------------------ sharing

    @classmethod
    def of(cls, path: str) -> ModuleWorker:
        """The worker for ``path`` (a realpath), created on first use.

        Workers (and their loaded modules) stay for the life of the process: python-
        pkcs11 caches the module per path, and unloading a module other code may still
        hold is unsafe. A worker holds no thread; an idle one costs nothing.
        """
        with cls._registry_lock:
            worker = cls._registry.get(path)
            if worker is None:
                worker = cls._registry[path] = ModuleWorker(path)
            return worker

    # ------------------------------------------------------------ inside a job

    def load(self) -> Any:
        """The initialised python-pkcs11 ``lib`` (only inside a ``call`` job)."""
        if self.lib is None:
            import pkcs11

            self.lib = pkcs11.lib(self.path)
        elif not self.lib.initialized:
            self.lib.initialize()
        return self.lib

    def reinitialize(self) -> None:
        """``C_Finalize`` + ``C_Initialize`` (only inside a ``call`` job).

        Needed to see a token that was removed and re-created (SoftHSM) or after the
        module lost its state. Every session of every store on this module dies;
        those stores notice the new ``generation`` and re-open.
        """
        lib = self.load()
        self.generation += 1
        self.logins.clear()
        self.lookups = 0
        lib.reinitialize()

    # ------------------------------------------------------------ calls

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` serialised with every other call into this module, in a
        worker thread, and return (or raise) its result."""
        last = self._last
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and last is not None and last[0] is loop:
            lane = last[1]
        else:
            lane = self._lane(loop)
        job: _Job[T] = _Job(fn, args, anyio.Event() if loop is None else loop.create_future())
        with lane.lock:
            lane.jobs.append(job)
            drainer = not lane.draining
            lane.draining = True
        if not drainer:
            try:
                if loop is None:
                    await job.waiter.wait()
                else:
                    await job.waiter
            except BaseException:  # cancelled: skip the job unless it runs already
                with lane.lock:
                    holds_role = job.state == _DRAIN
                    if job.state == _QUEUED or holds_role:
                        job.state = _CANCELLED
                if holds_role:
                    lane.hand_on()
                raise
            if job.state != _DRAIN:
                return job.outcome()
        # The drainer: one thread hop runs every job queued until the queue is empty.
        # Once the thread runs, run_sync (no abandon_on_cancel) waits for it even if
        # this task is cancelled meanwhile. Either way, the drain's results are handed
        # out and the role passed on before this returns or raises.
        report: list[tuple[list[_Job[Any]], bool]] = []
        try:
            await anyio.to_thread.run_sync(self._drain, lane, job, report, limiter=lane.limiter)
        finally:
            if report:
                unsent, holding = report[0]
                lane.wake(unsent)
            else:  # cancelled before the thread started (or none could be started)
                with lane.lock:
                    job.state = _CANCELLED  # still at the head of the queue: skip it
                holding = True
            if holding:
                lane.hand_on()
        return job.outcome()

    def _drain(
        self, lane: _Lane, first: _Job[Any], report: list[tuple[list[_Job[Any]], bool]]
    ) -> None:
        """In a worker thread: run queued jobs until the queue is empty or the budget is
        spent. Reports the finished jobs whose callers were not woken yet and whether
        the caller still holds the drainer role (budget spent with jobs left: it hands
        the role on).

        ``first`` (the drainer's own job, at the head of the queue) is never reported:
        its caller reads it when this returns. Results of the others go back in batches
        while jobs keep coming (see ``FLUSH_*``); an idle queue ends the drain at once,
        so a lone request never waits for a batch.
        """
        jobs = lane.jobs
        lock = lane.lock
        unsent: list[_Job[Any]] = []
        holding = True
        oldest = 0.0
        deadline = time.monotonic() + DRAIN_BUDGET_S
        try:
            with self._serial:
                while True:
                    with lock:
                        if not jobs:
                            lane.draining = holding = False
                            return
                        if time.monotonic() >= deadline and first.state in _FINISHED:
                            return
                        job = jobs.popleft()
                        if job.state == _CANCELLED:
                            continue
                        job.state = _RUNNING
                    try:
                        job.value = job.fn(*job.args)
                        job.state = _OK
                    except BaseException as exc:
                        job.value = exc
                        job.state = _FAILED
                    if job is first:
                        continue
                    if not unsent:
                        oldest = time.monotonic()
                    unsent.append(job)
                    queued = len(jobs)
                    if queued and (
                        queued < FLUSH_WHEN_QUEUE_BELOW
                        or len(unsent) >= FLUSH_AT_RESULTS
                        or time.monotonic() - oldest >= FLUSH_AFTER_S
                    ):
                        lane.call_soon(lane.wake, unsent)
                        unsent = []
        finally:
            report.append((unsent, holding))

    def _lane(self, loop: asyncio.AbstractEventLoop | None) -> _Lane:
        """The lane of ``loop`` (None: of the current trio run), created on first use."""
        key: Any = anyio.lowlevel.current_token().native_token if loop is None else loop
        last = self._last
        if last is not None and last[0] is key:
            return last[1]
        with self._lanes_lock:
            lane = self._lanes.get(key)
            if lane is None:
                # Forget idle lanes of other (most likely finished) event loops.
                for other in [k for k, v in self._lanes.items() if v.idle()]:
                    del self._lanes[other]
                call_soon = key.run_sync_soon if loop is None else loop.call_soon_threadsafe
                lane = self._lanes[key] = _Lane(loop, call_soon)
            self._last = (key, lane)
            return lane
